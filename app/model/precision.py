"""Reduced-precision inference modes, per tower, each checked against fp32 on the same weights.

A mode trades accuracy for speed, so `auto` only takes one whose embeddings of a fixed
probe set stay within COSINE_GUARD of fp32 on the weights actually loaded. On the CPU,
bf16 autocast pays off only with native bf16 (AVX512-BF16 or AMX); elsewhere it is
emulated and slower. int8 (PyTorch's dynamic quantisation of the Linear layers) is never
chosen by `auto`: it scales activations per batch, so an embedding would depend on which
other requests shared its forward pass. It is an explicit option for bulk ingestion.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# A mode is on by default only if every probe embedding keeps at least this cosine to fp32.
COSINE_GUARD = 0.999
# open_clip reads the text tower's dtype from this layer's weight, which int8 turns into a method.
_TEXT_DTYPE_PROBE_LAYER = "transformer.resblocks.0.mlp.c_fc"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); Linux only, else False."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class TowerMode:
    """How one tower runs: the precision, and its measured cosine to fp32 when checked."""

    precision: str
    cosine: float | None = None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def quantize_int8(tower: torch.nn.Module, *, text: bool) -> torch.nn.Module:
    """A copy of the tower with its Linear layers dynamically quantised to int8 (CPU only)."""
    names = {name for name, module in tower.named_modules() if type(module) is torch.nn.Linear}
    if text:
        names.discard(_TEXT_DTYPE_PROBE_LAYER)
    spec = {name: torch.ao.quantization.default_dynamic_qconfig for name in names}
    with warnings.catch_warnings():
        # PyTorch points users of eager quantisation at torchao; the API still works and ships with torch.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(tower), spec, dtype=torch.qint8)


def candidates(device: torch.device, kind: str) -> list[str]:
    """Modes `auto` tries for a tower before falling back to fp32: batch-invariant ones only."""
    if device.type == "cuda":
        return ["bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    # Text passes are short; bf16 autocast has been measured slower than fp32 there at batch > 1.
    return ["bf16"] if cpu_has_native_bf16() and kind == "image" else []


def min_cosine(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(reference.float(), other.float(), dim=-1).min())


def choose(
    requested: str,
    *,
    kind: str,
    device: torch.device,
    embed: Callable[[str], torch.Tensor],
) -> TowerMode:
    """The mode a tower runs in. `embed(mode)` embeds the fixed probe set in that mode."""
    if requested == "fp32":
        return TowerMode("fp32")
    if requested != "auto":
        checked = min_cosine(embed("fp32"), embed(requested))
        if checked < COSINE_GUARD:
            log.warning(
                "%s tower in %s as asked: cosine to fp32 is %.5f on these weights, under the %.3f guard",
                kind,
                requested,
                checked,
                COSINE_GUARD,
            )
        return TowerMode(requested, checked)
    options = candidates(device, kind)
    if not options:
        return TowerMode("fp32")
    reference = embed("fp32")
    for option in options:
        cosine = min_cosine(reference, embed(option))
        if cosine >= COSINE_GUARD:
            return TowerMode(option, cosine)
        log.info(
            "%s tower: %s kept off, cosine to fp32 %.5f < %.3f on these weights", kind, option, cosine, COSINE_GUARD
        )
    return TowerMode("fp32")
