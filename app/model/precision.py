"""Inference modes per tower, and the guards that decide whether a mode may serve.

A mode trades accuracy for speed, so `auto` only takes one whose embeddings of a fixed
probe set stay within COSINE_GUARD of fp32 on the weights actually loaded. On the CPU,
bf16 pays off only with native bf16 (AVX512-BF16 or AMX); elsewhere it is emulated and
slower. int8 is never chosen by `auto`: it is an explicit option for bulk ingestion.
An exported (ONNX) tower must match torch fp32 within PARITY_GUARD, since it claims to be
the same computation, not an approximation of it. Torch-free: the ONNX path imports this.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# A reduced-precision mode is on by default only if every probe embedding keeps this cosine to fp32.
COSINE_GUARD = 0.999
# An exported tower serves only if every probe embedding keeps this cosine to torch fp32.
PARITY_GUARD = 0.99999


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


def min_cosine(reference: np.ndarray, other: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    dots = np.sum(reference * other, axis=-1)
    norms = np.linalg.norm(reference, axis=-1) * np.linalg.norm(other, axis=-1)
    return float(np.min(dots / np.maximum(norms, 1e-30)))


def choose(
    requested: str,
    *,
    kind: str,
    candidates: Sequence[str],
    embed: Callable[[str], np.ndarray],
) -> TowerMode:
    """The mode a tower runs in. `embed(mode)` embeds the fixed probe set in that mode;
    `candidates` are the modes `auto` may take, best first, before falling back to fp32."""
    reference: list[np.ndarray] = []

    def cosine(mode: str) -> float:
        if not reference:
            reference.append(embed("fp32"))
        return min_cosine(reference[0], embed(mode))

    return choose_by_cosine(requested, kind=kind, candidates=candidates, cosine=cosine)


def choose_by_cosine(
    requested: str, *, kind: str, candidates: Sequence[str], cosine: Callable[[str], float]
) -> TowerMode:
    """`choose`, given each mode's cosine to fp32 on the probe set (measured now, or remembered)."""
    if requested == "fp32":
        return TowerMode("fp32")
    if requested != "auto":
        checked = cosine(requested)
        if checked < COSINE_GUARD:
            log.warning(
                "%s tower in %s as asked: cosine to fp32 is %.5f on these weights, under the %.3f guard",
                kind,
                requested,
                checked,
                COSINE_GUARD,
            )
        return TowerMode(requested, checked)
    for option in candidates:
        measured = cosine(option)
        if measured >= COSINE_GUARD:
            return TowerMode(option, measured)
        log.info(
            "%s tower: %s kept off, cosine to fp32 %.5f < %.3f on these weights", kind, option, measured, COSINE_GUARD
        )
    return TowerMode("fp32")
