# syntax=docker/dockerfile:1
# pe-search: CPU image by default.
#   docker build -t pe-search .
# NVIDIA GPUs (needs the NVIDIA container toolkit on the host):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t pe-search:cuda .
# Air-gapped sites: bake a model's weights into the image:
#   docker build --build-arg BAKE_MODEL=PE-Core-L14-336 -t pe-search:l14 .
# Optional features: EXTRAS lists pyproject.toml extras (postgres, ray, openvino, s3, gcs, azure,
# objects = s3+gcs+azure), comma-separated, installed as pe-search[EXTRAS]; none by default:
#   docker build --build-arg EXTRAS=postgres,s3 -t pe-search:pg .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1
ARG BAKE_MODEL=""
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PE_SEARCH_HOST=0.0.0.0 \
    PE_SEARCH_PORT=9001 \
    PE_SEARCH_DATA_DIR=/data \
    PE_SEARCH_CACHE_DIR=/models

WORKDIR /app

# torch first, from the index matching the target hardware, so the project install reuses it.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY pyproject.toml README.md ./
COPY app ./app
COPY index ./index
COPY migrations ./migrations
RUN pip install "./${EXTRAS:+[${EXTRAS}]}" \
    && useradd --create-home --uid 10001 pesearch \
    && mkdir -p /data /models \
    && if [ -n "${BAKE_MODEL}" ]; then pe-search download --model "${BAKE_MODEL}"; fi \
    && chown -R 10001:10001 /data /models

USER 10001
# /data holds the database, indexes, uploads and thumbnails. Mount /models too to keep
# downloaded weights across containers (not when they are baked in: the mount hides them).
VOLUME ["/data"]
EXPOSE 9001

HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PE_SEARCH_PORT'] + '/ready', timeout=4)"]

CMD ["pe-search", "serve"]
