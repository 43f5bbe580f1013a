# syntax=docker/dockerfile:1
# CPU image by default. For NVIDIA GPUs: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PE_SEARCH_HOST=0.0.0.0 \
    PE_SEARCH_PORT=9001 \
    PE_SEARCH_DATA_DIR=/data \
    HF_HOME=/cache/huggingface

WORKDIR /app

# torch first, from the index matching the target hardware, so the project install reuses it.
RUN pip install --index-url "${TORCH_INDEX}" torch torchvision

COPY pyproject.toml README.md ./
COPY app ./app
COPY index ./index
COPY migrations ./migrations
RUN pip install . \
    && useradd --create-home --uid 10001 pesearch \
    && mkdir -p /data /cache \
    && chown pesearch:pesearch /data /cache

USER pesearch
VOLUME ["/data", "/cache"]
EXPOSE 9001

HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PE_SEARCH_PORT\"]}/ready', timeout=4)"

CMD ["pe-search", "serve"]
