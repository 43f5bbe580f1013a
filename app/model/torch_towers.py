"""The PyTorch runtime: the open_clip model built once, and its towers in the precision each runs in.

It is the reference every other runtime is checked against, and the runtime CUDA uses. Only this
module (and the export) import torch or open_clip, so a process on the ONNX path never pays for them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import open_clip
import torch
from torch.overrides import TorchFunctionMode

from app.model import precision
from app.model.precision import TowerMode
from app.model.variants import Variant
from app.model.weights import HUB, RANDOM, RANDOM_WEIGHTS_SEED, fetch_hub_checkpoint, load_weights_file

log = logging.getLogger(__name__)

# open_clip reads the text tower's dtype from this layer's weight, which int8 turns into a method.
_TEXT_DTYPE_PROBE_LAYER = "transformer.resblocks.0.mlp.c_fc"
_RANDOM_FILLS = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.erfinv_}
_IN_PLACE = {torch.Tensor.mul_, torch.Tensor.add_, torch.Tensor.sub_, torch.Tensor.div_, torch.Tensor.clamp_}
_IN_PLACE |= {torch.Tensor.fill_, torch.Tensor.zero_, torch.Tensor.copy_}


class _SkipInitialisation(TorchFunctionMode):
    """Construction without the random initialisation of parameters that a checkpoint overwrites anyway
    (8 s of a B16 build on 2 cores). Deterministic buffers (RoPE tables, the causal mask) are still computed;
    the strict load that follows fails if any parameter or persistent buffer were left unset. A torch function
    mode is scoped to this thread and this block, unlike patching torch.nn.init."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        is_init = getattr(func, "__module__", "") == "torch.nn.init" and func.__name__.endswith("_")
        if is_init or func in _RANDOM_FILLS or (func in _IN_PLACE and isinstance(target, torch.nn.Parameter)):
            return target
        return func(*args, **kwargs)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"PE_SEARCH_DEVICE={device} but CUDA is not available on this host")
    return resolved


def build_model(variant: Variant, *, weights: str, cache_dir: Any, device: torch.device) -> open_clip.CustomTextCLIP:
    name = variant.open_clip_name
    if weights == RANDOM:
        log.warning(
            "Building %s with RANDOM weights: embeddings are meaningless. For tests and development only.",
            variant.version_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = open_clip.create_model(name, pretrained=None)
    else:
        path = fetch_hub_checkpoint(variant, cache_dir) if weights == HUB else weights
        with _SkipInitialisation():
            model = open_clip.create_model(name, pretrained=None)
        load_weights_file(model, path)
        log.info("Loaded %s weights from %s", variant.version_id, path)
    return model.to(device).eval()


def autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    if mode in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)
    return contextlib.nullcontext()


def quantize_int8(tower: torch.nn.Module, *, text: bool) -> torch.nn.Module:
    """A copy of the tower with its Linear layers dynamically quantised to int8 (CPU only). Dynamic scales
    depend on the batch: the ONNX runtime's static int8 does not, and is what int8 means there."""
    names = {name for name, module in tower.named_modules() if type(module) is torch.nn.Linear}
    if text:
        names.discard(_TEXT_DTYPE_PROBE_LAYER)
    spec = {name: torch.ao.quantization.default_dynamic_qconfig for name in names}
    with warnings.catch_warnings():
        # PyTorch points users of eager quantisation at torchao; the API still works and ships with torch.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(tower), spec, dtype=torch.qint8)


def candidates(device: torch.device, kind: str) -> list[str]:
    """Modes `auto` tries for a tower before fp32: batch-invariant ones only."""
    if device.type == "cuda":
        return ["bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    # Text passes are short; bf16 autocast has been measured slower than fp32 there (B16 at batch 16: x0.17).
    return ["bf16"] if precision.cpu_has_native_bf16() and kind == "image" else []


class TorchTower:
    """One tower of the model in its chosen mode: a batch of pixels or token ids in, features out."""

    runtime = "torch"

    def __init__(self, kind: str, module: torch.nn.Module, device: torch.device, mode: TowerMode) -> None:
        self.kind = kind
        self.module = module
        self.device = device
        self.mode = mode

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda":
            # Pinned host memory lets the copy run asynchronously, overlapping the next batch's stacking.
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        with self._inference():
            return self.module(tensor).float().cpu().numpy()

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.inference_mode(), autocast(self.device, self.mode.precision):
            yield


class TorchModel:
    """The open_clip model of one variant on one device: `tower(kind, ...)` configures each tower once."""

    def __init__(self, variant: Variant, *, weights: str, cache_dir: Any, device: torch.device) -> None:
        self.variant = variant
        self.device = device
        self.model = build_model(variant, weights=weights, cache_dir=cache_dir, device=device)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    def fp32(self, kind: str) -> torch.nn.Module:
        return self.model.visual if kind == "image" else self.model.text

    def tower(
        self, kind: str, *, requested: str, probe: np.ndarray, compile: bool = False, backend: str = "inductor"
    ) -> TorchTower:
        """The tower in the mode `requested` resolves to, chosen against fp32 on the probe batch."""
        fp32 = self.fp32(kind)
        variants: dict[str, torch.nn.Module] = {"fp32": fp32}

        def embed(mode: str) -> np.ndarray:
            if mode == "int8" and mode not in variants:
                variants[mode] = quantize_int8(fp32, text=kind == "text")
            return TorchTower(kind, variants.get(mode, fp32), self.device, TowerMode(mode))(probe)

        mode = precision.choose(requested, kind=kind, candidates=candidates(self.device, kind), embed=embed)
        module: Any = variants.get(mode.precision, fp32)
        if compile:
            # dynamic: batch sizes vary from pass to pass, and must not each trigger a recompile.
            module = torch.compile(module, dynamic=True, backend=backend)
        tower = TorchTower(kind, module, self.device, mode)
        if compile:
            tower(probe)  # compile now, not on the first request
        return tower
