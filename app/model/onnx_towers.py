"""Exported towers on the CPU runtimes: ONNX Runtime, and OpenVINO where it is installed. Torch-free.

Each tower is one session shared by however many model workers call it: `run` on an ONNX Runtime
session and an OpenVINO compiled model's infer requests (one per calling thread) are thread-safe.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from app.model.precision import TowerMode


def available(runtime: str) -> bool:
    """Whether a runtime's package is installed, without importing it."""
    module = {"onnx": "onnxruntime", "openvino": "openvino"}[runtime]
    return importlib.util.find_spec(module) is not None


def _threads(threads: int) -> int:
    return threads if threads > 0 else max(1, os.cpu_count() or 1)


class OrtTower:
    """One tower as an ONNX Runtime CPU session."""

    runtime = "onnx"

    def __init__(self, kind: str, path: Path, mode: TowerMode, *, threads: int, spin: bool = True) -> None:
        import onnxruntime as ort

        self.kind = kind
        self.mode = mode
        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not spin:
            # Several workers share the cores: a thread spinning between ops would steal another worker's.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # the optimizer's notes on every load are not the operator's business
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input: np.ascontiguousarray(batch)})[0], dtype=np.float32)


class OpenVinoTower:
    """One tower compiled by OpenVINO for the CPU, in fp32 or bf16 (AMX, AVX512-BF16)."""

    runtime = "openvino"

    def __init__(self, kind: str, path: Path, mode: TowerMode, *, threads: int, cache_dir: Path | None = None) -> None:
        import openvino as ov

        self.kind = kind
        self.mode = mode
        core = ov.Core()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if mode.precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": _threads(threads),
        }
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)  # compiled blobs: a later start skips compilation
        self._compiled = core.compile_model(str(path), "CPU", config)
        self._requests = threading.local()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        result = request.infer({0: np.ascontiguousarray(batch)})
        return np.array(result[self._compiled.output(0)], dtype=np.float32)
