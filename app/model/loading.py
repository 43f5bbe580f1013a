"""Which runtime serves each tower, and getting that tower loaded: from the export cache, or by building
the torch model (and exporting it, the first time) when the cache cannot serve.

`plan_runtime` is the rule (pure, tested as such); `TowerLoader` carries it out lazily per tower, so a
text search never loads the image tower and an ingest never loads the text one.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from app.model import precision
from app.model.export_cache import TOWER_FILES, Entry, ExportCache, ExportKey, default_root, weights_identity
from app.model.onnx_towers import OrtTower, available
from app.model.precision import PARITY_GUARD, TowerMode
from app.model.probes import PROBE_FILE, probe_inputs
from app.model.tokenizer import PETokenizer
from app.model.variants import Variant
from app.model.weights import HUB

if TYPE_CHECKING:
    from app.model.torch_towers import TorchModel

log = logging.getLogger(__name__)

KINDS = ("image", "text")
RUNTIMES = ("auto", "torch", "onnx", "openvino")


class Tower(Protocol):
    kind: str
    runtime: str
    mode: TowerMode

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelOptions:
    weights: str = HUB
    device: str = "auto"
    runtime: str = "auto"
    cache_dir: Path | None = None
    export_dir: Path | None = None
    image_precision: str = "auto"
    text_precision: str = "auto"
    compile: bool = False
    compile_backend: str = "inductor"
    threads: int = 0
    workers: int = 1

    def requested(self, kind: str) -> str:
        return self.image_precision if kind == "image" else self.text_precision


def cuda_possible() -> bool:
    """False where no NVIDIA driver is loaded: then `auto` knows it is on the CPU without importing torch."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def device_type(device: str) -> str:
    if device == "cpu":
        return "cpu"
    if device == "auto" and not cuda_possible():
        return "cpu"
    from app.model.torch_towers import resolve_device

    return resolve_device(device).type


def plan_runtime(
    kind: str, *, runtime: str, requested: str, device: str, installed: dict[str, bool], native_bf16: bool
) -> str:
    """The runtime a tower runs on; ValueError for a combination that cannot run. The rule follows the
    measurements in docs/BENCHMARKS.md (PE-Core-B16, 2 cores): in fp32 ONNX Runtime beats torch eager
    (text x1.4 at batch 1, image about even to x2.5 by CPU); on a CPU with native bf16, bf16 wins x2-4,
    and OpenVINO runs it without torch (a process starts in seconds, not tens of seconds). Torch's bf16
    images are faster still at batch 8 (22 img/s against 14), so without OpenVINO images go to torch;
    torch's bf16 text is slower than its fp32, so text then stays on ONNX Runtime."""
    if requested not in precision.PRECISIONS:
        raise ValueError(f"unknown {kind} precision {requested!r}; valid: {', '.join(precision.PRECISIONS)}")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if device == "cuda":
        if runtime in ("onnx", "openvino"):
            raise ValueError(f"PE_SEARCH_RUNTIME={runtime} runs on the CPU; on CUDA use torch (or auto)")
        if requested == "int8":
            raise ValueError("int8 runs on the CPU only; use auto, fp16 or bf16 on CUDA")
        return "torch"
    if requested == "fp16":
        raise ValueError("fp16 is for CUDA; on the CPU use bf16 or int8")
    if runtime == "auto":
        runtime = _auto_cpu(kind, requested, installed, native_bf16)
    if runtime != "torch" and not installed[runtime]:
        package = {"onnx": "onnxruntime", "openvino": "openvino (the `openvino` extra)"}[runtime]
        raise ValueError(f"PE_SEARCH_RUNTIME={runtime} needs {package}, which is not installed")
    if runtime == "onnx" and requested == "bf16":
        raise ValueError("ONNX Runtime has no bf16 on the CPU; use PE_SEARCH_RUNTIME=openvino or torch for bf16")
    if runtime == "openvino" and requested == "int8":
        raise ValueError("int8 runs on ONNX Runtime (static quantisation); use PE_SEARCH_RUNTIME=onnx or auto")
    return runtime


def _auto_cpu(kind: str, requested: str, installed: dict[str, bool], native_bf16: bool) -> str:
    if requested == "bf16":
        return "openvino" if installed["openvino"] else "torch"
    if requested == "auto" and native_bf16:
        if installed["openvino"]:
            return "openvino"
        if kind == "image":
            return "torch"
    return "onnx" if installed["onnx"] else "torch"


class TowerLoader:
    """Loads towers of one variant as planned, sharing one torch model and one export entry among them."""

    def __init__(self, variant: Variant, options: ModelOptions) -> None:
        self.variant = variant
        self.options = options
        self.device = device_type(options.device)
        installed = {runtime: available(runtime) for runtime in ("onnx", "openvino")}
        self.plans = {
            kind: plan_runtime(
                kind,
                runtime=options.runtime,
                requested=options.requested(kind),
                device=self.device,
                installed=installed,
                native_bf16=precision.cpu_has_native_bf16(),
            )
            for kind in KINDS
        }
        self._torch: TorchModel | None = None
        self._entry: Entry | None = None
        self._tokenizer: PETokenizer | None = None
        self._lock = threading.RLock()

    @property
    def cache(self) -> ExportCache:
        return ExportCache(self.options.export_dir or default_root(self.options.cache_dir))

    def tower(self, kind: str) -> Tower:
        """Load one tower. Towers of different kinds may load at once (the lock only covers the shared
        export entry and torch model), so a server's start-up waits for the slower, not the sum."""
        with self._lock:
            runtime = self.plans[kind]
            entry = None if runtime == "torch" else self.entry()
        if entry is None:
            return self._torch_tower(kind)
        with self._lock:
            if entry.parity(kind) < PARITY_GUARD:
                log.warning(
                    "%s %s tower: the ONNX export's cosine to torch fp32 is %.7f, under the %.5f guard: torch serves",
                    self.variant.version_id,
                    kind,
                    entry.parity(kind),
                    PARITY_GUARD,
                )
                self.plans[kind] = "torch"
                runtime = "torch"
        if runtime == "torch":
            return self._torch_tower(kind)
        return self._exported(kind, runtime, entry)

    def tokenizer(self) -> PETokenizer:
        with self._lock:
            if self._tokenizer is None:
                if self._entry is not None or "torch" not in self.plans.values():
                    self._tokenizer = PETokenizer.from_file(self.entry().file("tokenizer.json"), self.context)
                else:
                    from app.model.tokenizer import tokenizer_json

                    self._tokenizer = PETokenizer.from_json(tokenizer_json(self.context), self.context)
            return self._tokenizer

    @property
    def context(self) -> int:
        return self.variant.context_length

    def logit_scale(self) -> float:
        with self._lock:
            if self._entry is not None:
                return float(self._entry.manifest["logit_scale"])
            if self._torch is not None:
                return self._torch.logit_scale
            return float(self.entry().manifest["logit_scale"])

    def entry(self) -> Entry:
        """The checked export entry for these weights, exporting it first if the cache has none."""
        with self._lock:
            if self._entry is None:
                self._entry = self._find_or_export()
            return self._entry

    def _find_or_export(self) -> Entry:
        cache, memo = self.cache, self.cache.root
        identity = weights_identity(self.variant, self.options.weights, hub_cache=self.options.cache_dir, memo_dir=memo)
        if identity is None:  # hub weights not downloaded yet: the torch build downloads them
            self.torch_model()
            identity = weights_identity(
                self.variant, self.options.weights, hub_cache=self.options.cache_dir, memo_dir=memo
            )
        if identity is None:
            raise RuntimeError(f"the weights of {self.variant.version_id} could not be identified after download")
        key = ExportKey(self.variant.version_id, identity)
        entry = cache.lookup(key)
        if entry is not None:
            return entry
        with cache.lock(key):
            entry = cache.lookup(key)  # another process may have exported while this one waited
            if entry is not None:
                return entry
            from app.model.onnx_export import export_entry

            log.info("Exporting %s to ONNX (once; later starts load it without torch)", self.variant.version_id)
            return export_entry(self.torch_model(), cache, key)

    def torch_model(self) -> TorchModel:
        with self._lock:
            if self._torch is None:
                from app.model.torch_towers import TorchModel, resolve_device

                device = resolve_device(self.options.device)
                if device.type == "cpu" and (self.options.threads or self.options.workers > 1):
                    # torch's pool is per process, and a torch tower is its only user here: sized like the
                    # exported runtimes' sessions, or concurrent workers would each spread over every core.
                    import torch

                    torch.set_num_threads(self._threads())
                self._torch = TorchModel(
                    self.variant, weights=self.options.weights, cache_dir=self.options.cache_dir, device=device
                )
            return self._torch

    def release_torch(self) -> None:
        """Free the torch model once no tower runs on it (it was built only to export)."""
        with self._lock:
            if "torch" not in self.plans.values():
                self._torch = None

    def _torch_tower(self, kind: str) -> Tower:
        model = self.torch_model()
        probe = probe_inputs(self.variant, self.tokenizer())[kind]
        return model.tower(
            kind,
            requested=self.options.requested(kind),
            probe=probe,
            compile=self.options.compile,
            backend=self.options.compile_backend,
        )

    def _threads(self) -> int:
        if self.options.threads:
            return self.options.threads
        return max(1, (os.cpu_count() or 1) // max(1, self.options.workers))

    def _exported(self, kind: str, runtime: str, entry: Entry) -> Tower:
        requested = self.options.requested(kind)
        path = entry.file(TOWER_FILES[kind])
        threads = self._threads()
        if runtime == "onnx":
            if requested == "int8":
                from app.model.quantize import int8_tower

                return int8_tower(self, kind, entry, threads=threads, spin=self.options.workers == 1)
            return OrtTower(
                kind, path, TowerMode("fp32", entry.parity(kind)), threads=threads, spin=self.options.workers == 1
            )
        from app.model.openvino_modes import openvino_tower

        return openvino_tower(self, kind, entry, requested=requested, threads=threads)

    @staticmethod
    def reference(entry: Entry, kind: str) -> np.ndarray:
        with np.load(entry.file(PROBE_FILE)) as stored:
            return np.asarray(stored[f"{kind}_reference"])

    def describe(self, kind: str, tower: Any) -> str:
        cosine = tower.mode.cosine
        checked = "n/a" if cosine is None else f"{cosine:.5f}"
        return (
            f"{self.variant.version_id} {kind} tower: {tower.runtime} {tower.mode.precision} (cosine to fp32 {checked})"
        )
