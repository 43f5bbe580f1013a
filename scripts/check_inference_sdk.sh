#!/usr/bin/env bash
# Check pe-search against Roboflow's official Python client, `inference-sdk` (1.x).
#
# The SDK pins numpy<2.4 and pillow<13, which conflict with the project's own
# environment, so it runs in a venv of its own. The script:
#   1. creates that venv (or reuses it) and pip installs inference-sdk;
#   2. starts `pe-search serve` from the project venv on a free 127.0.0.1 port,
#      with random weights and PE-Core-T16-384 (dim 512), and waits for /ready;
#   3. calls get_perception_encoder_image_embeddings (a numpy image, a JPEG file
#      path, a list of both) and get_perception_encoder_text_embeddings ("a cat",
#      a list of two) through the SDK, with the key sent in the body (the SDK's
#      default), as a Bearer header, and both; checks every embedding is 512 long
#      and finite, and every response carries inference_id, frame_id and time;
#   4. always stops the server; prints PASS or FAIL; exits non-zero on failure.
#
# Usage: scripts/check_inference_sdk.sh [SDK_VENV_DIR] [PROJECT_VENV_BIN]
#   SDK_VENV_DIR      venv for the SDK; reused if it exists (default, or "": a temporary one, removed after)
#   PROJECT_VENV_BIN  the project venv's bin dir holding `pe-search` (default: $PE_SEARCH_VENV_BIN,
#                     else .venv/bin under the repository root)
# Environment:
#   PYTHON                 interpreter that creates the SDK venv (default: python3)
#   INFERENCE_SDK_SPEC     pip requirement (default: "inference-sdk>=1,<2")
#   PE_SEARCH_READY_TIMEOUT  seconds to wait for /ready (default: 180)
#   KEEP_WORKDIR=1         keep the work dir (server log, SDK program) for inspection

set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="PE-Core-T16-384"
EXPECTED_DIM=512
PYTHON="${PYTHON:-python3}"
SDK_SPEC="${INFERENCE_SDK_SPEC:-inference-sdk>=1,<2}"
READY_TIMEOUT="${PE_SEARCH_READY_TIMEOUT:-180}"

PROJECT_BIN="${2:-${PE_SEARCH_VENV_BIN:-$REPO_ROOT/.venv/bin}}"
SDK_VENV="${1:-}"

WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/pe-search-sdk-check.XXXXXX")"
SERVER_PID=""
# Without a path, the SDK venv lives in the work dir and goes with it.
[[ -n "$SDK_VENV" ]] || SDK_VENV="$WORKDIR/sdk-venv"

log() { printf '[check_inference_sdk] %s\n' "$*" >&2; }

stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server did not stop on SIGTERM; killing it"
            kill -KILL "$SERVER_PID" 2>/dev/null
        fi
    fi
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
}

cleanup() {
    stop_server
    if [[ "${KEEP_WORKDIR:-0}" == 1 ]]; then
        log "work dir kept: $WORKDIR"
    else
        rm -rf "$WORKDIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "FAIL: $*"
    if [[ -s "$WORKDIR/server.log" ]]; then
        echo "--- pe-search server log (last 60 lines) ---"
        tail -n 60 "$WORKDIR/server.log"
        echo "--- end of server log ---"
    fi
    exit 1
}

# --- 1. the project's server ------------------------------------------------------------------
[[ -x "$PROJECT_BIN/pe-search" ]] || fail "no pe-search in $PROJECT_BIN (pass the project venv's bin dir as \$2 or PE_SEARCH_VENV_BIN)"
[[ -x "$PROJECT_BIN/python" ]] || fail "no python in $PROJECT_BIN"

# --- 2. the SDK's own venv --------------------------------------------------------------------
if [[ -x "$SDK_VENV/bin/python" ]]; then
    log "reusing SDK venv $SDK_VENV"
else
    log "creating SDK venv $SDK_VENV"
    "$PYTHON" -m venv "$SDK_VENV" || fail "could not create a venv with $PYTHON"
fi
log "pip install '$SDK_SPEC'"
"$SDK_VENV/bin/python" -m pip install --disable-pip-version-check -q "$SDK_SPEC" >"$WORKDIR/pip.log" 2>&1 \
    || { tail -n 30 "$WORKDIR/pip.log"; fail "pip install $SDK_SPEC failed"; }
SDK_VERSION="$("$SDK_VENV/bin/python" -c 'from importlib.metadata import version; print(version("inference-sdk"))')" \
    || fail "inference-sdk is not importable in $SDK_VENV"
log "inference-sdk $SDK_VERSION"

# --- 3. start the server on a free port -----------------------------------------------------
PORT="$("$PROJECT_BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')" \
    || fail "could not find a free port"
URL="http://127.0.0.1:$PORT"
log "starting pe-search ($MODEL, random weights) on $URL"
# Subshell + exec: the PID recorded is the server itself, and no model choice leaks in from the caller.
(
    unset PERCEPTION_ENCODER_VERSION_ID
    export PE_SEARCH_WEIGHTS=random PE_SEARCH_MODEL="$MODEL" PE_SEARCH_DEVICE=cpu \
        PE_SEARCH_DATA_DIR="$WORKDIR/data" HF_HUB_OFFLINE=1
    exec "$PROJECT_BIN/pe-search" serve --host 127.0.0.1 --port "$PORT"
) >"$WORKDIR/server.log" 2>&1 </dev/null &
SERVER_PID=$!

"$PROJECT_BIN/python" - "$URL" "$SERVER_PID" "$READY_TIMEOUT" <<'PY' || fail "the server never became ready"
import os, sys, time, urllib.error, urllib.request

url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server process exited before it was ready")
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except urllib.error.HTTPError as exc:
        if exc.code != 503:
            sys.exit(f"/ready answered {exc.code}")
        if b'"failed"' in exc.read():
            sys.exit("the default model failed to load")
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(f"not ready within {timeout:.0f} s")
PY
log "server ready"

# --- 4. the SDK against it --------------------------------------------------------------------
cat >"$WORKDIR/sdk_check.py" <<'PY'
"""inference-sdk -> pe-search: perception encoder image and text embeddings."""

import math
import sys
import warnings

import numpy as np
from inference_sdk import InferenceConfiguration, InferenceHTTPClient

url, expected_dim, image_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
failures = []


def check(label, result, count, responses):
    """`count` embeddings spread over `responses` response bodies (the SDK unwraps a one-item list)."""
    try:
        bodies = result if isinstance(result, list) else [result]
        assert len(bodies) == responses, f"expected {responses} response(s), got {len(bodies)}"
        vectors = []
        for body in bodies:
            assert isinstance(body, dict), f"response is {type(body).__name__}, not a JSON object"
            assert {"inference_id", "frame_id", "time"} <= set(body), f"missing keys; has {sorted(body)}"
            vectors.extend(body["embeddings"])
        assert len(vectors) == count, f"expected {count} embedding(s), got {len(vectors)}"
        for vector in vectors:
            assert len(vector) == expected_dim, f"embedding length {len(vector)}, expected {expected_dim}"
            assert all(isinstance(v, float) and math.isfinite(v) for v in vector), "non-finite or non-float values"
        print(f"  ok   {label}: {count} x {len(vectors[0])}, first values {[round(v, 4) for v in vectors[0][:3]]}")
    except Exception as exc:  # noqa: BLE001 - report every check
        failures.append(label)
        print(f"  FAIL {label}: {type(exc).__name__}: {exc}")


def call(label, fn, count=1, responses=1, **kwargs):
    try:
        result = fn(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the SDK raises its own HTTP error types
        failures.append(label)
        print(f"  FAIL {label}: the SDK raised {type(exc).__name__}: {exc}")
        return
    check(label, result, count, responses)


# The SDK nags (once per client) about sending the key in the body; the header transports are checked below.
warnings.filterwarnings("ignore", message=".*legacy channel.*")

client = InferenceHTTPClient(api_url=url, api_key="test")

rng = np.random.default_rng(0)
y, x = np.mgrid[0:240, 0:320]
bgr = np.stack([x * 255 // 319, y * 255 // 239, ((x // 16 + y // 16) % 2) * 200 + 20], axis=-1)
bgr = np.clip(bgr + rng.integers(-12, 13, bgr.shape), 0, 255).astype(np.uint8)

call("image embeddings, numpy array", client.get_perception_encoder_image_embeddings, inference_input=bgr)
call("image embeddings, JPEG file path", client.get_perception_encoder_image_embeddings, inference_input=image_path)
call(
    "image embeddings, two images (one request each)",
    client.get_perception_encoder_image_embeddings,
    count=2,
    responses=2,
    inference_input=[bgr, image_path],
)
call(
    "image embeddings, explicit version PE-Core-T16-384",
    client.get_perception_encoder_image_embeddings,
    inference_input=bgr,
    perception_encoder_version="PE-Core-T16-384",
)
call("text embeddings, 'a cat'", client.get_perception_encoder_text_embeddings, text="a cat")
call(
    "text embeddings, two texts (one request)",
    client.get_perception_encoder_text_embeddings,
    count=2,
    text=["a cat", "a dog"],
)
for transport in ("header", "both"):
    keyed = InferenceHTTPClient(api_url=url, api_key="test").configure(
        InferenceConfiguration(api_key_transport=transport)
    )
    call(f"image embeddings, api_key_transport={transport}", keyed.get_perception_encoder_image_embeddings, inference_input=bgr)
    call(f"text embeddings, api_key_transport={transport}", keyed.get_perception_encoder_text_embeddings, text="a cat")

sys.exit(1 if failures else 0)
PY

# A JPEG on disk for the file-path input, written with the SDK venv's own OpenCV/Pillow.
"$SDK_VENV/bin/python" - "$WORKDIR/sample.jpg" <<'PY' || fail "could not write the sample JPEG"
import sys

import numpy as np
from PIL import Image

y, x = np.mgrid[0:200, 0:300]
pixels = np.stack([(x * 255 // 299), (y * 255 // 199), ((x // 20 + y // 20) % 2) * 180 + 40], axis=-1)
Image.fromarray(pixels.astype(np.uint8)).save(sys.argv[1], quality=90)
PY

echo "inference-sdk $SDK_VERSION -> pe-search at $URL ($MODEL, random weights)"
if "$SDK_VENV/bin/python" "$WORKDIR/sdk_check.py" "$URL" "$EXPECTED_DIM" "$WORKDIR/sample.jpg"; then
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        fail "the server died during the checks"
    fi
    stop_server
    echo "PASS: inference-sdk $SDK_VERSION works against pe-search"
    exit 0
fi
fail "inference-sdk $SDK_VERSION calls against pe-search failed (see above)"
