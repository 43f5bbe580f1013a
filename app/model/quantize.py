"""Static int8 for ONNX Runtime: per-channel weights, activation ranges calibrated once, so an embedding
does not depend on what shares its batch (dynamic int8's does). Made from a cached fp32 export, without
torch, once per entry; its cosine to torch fp32 on the probe set is measured then, logged and kept.

Only the MatMul and Gemm layers with a weight operand are quantised. Attention's activation-by-activation
products (QK^T, PV) stay fp32: softmax rows over 577 tokens hold values under one 8-bit step, which
quantisation rounds to zero (a tower quantised whole embedded everything as the zero vector). The final
projection stays fp32 too: on towers with outlier channels it was the one exclusion that clearly helped
(centred cosine 0.960 -> 0.972 image, 0.978 -> 0.988 text), at no measurable speed cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.model.calibration import CAPTIONS, calibration_images
from app.model.export_cache import TOWER_FILES, Entry, ExportCache
from app.model.onnx_towers import OrtTower
from app.model.precision import COSINE_GUARD, TowerMode, min_cosine
from app.model.probes import probe_inputs

if TYPE_CHECKING:
    from app.model.loading import TowerLoader

log = logging.getLogger(__name__)

# Protobuf's limit: a larger model keeps its weights in a side file.
_PROTOBUF_LIMIT = 2 * 1024**3 - 1024**2


def weight_matmuls(model_path: Path) -> tuple[list[str], list[str]]:
    """(MatMul/Gemm nodes to quantise, those to keep in fp32): see the module's docstring."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    weighted: list[str] = []
    activations: list[str] = []
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            (weighted if any(name in constants for name in node.input[1:2]) else activations).append(node.name)
    return weighted[:-1], activations + weighted[-1:]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of single-item batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self._items: Iterator[np.ndarray] = iter(batches)
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._items, None)
        return None if batch is None else {self._name: batch}

    def rewind(self) -> None:  # the calibrator reads the data once
        pass


def quantize_tower(source: Path, target: Path, kind: str, batches: list[np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name(f"{target.name}.pre.onnx")
    large = source.stat().st_size > _PROTOBUF_LIMIT
    try:
        quant_pre_process(str(source), str(prepared), save_as_external_data=large)
    except AssertionError:  # symbolic shape inference cannot follow the text tower's reshapes
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True, save_as_external_data=large)
    weighted, kept = weight_matmuls(prepared)
    quantize_static(
        str(prepared),
        str(target),
        _Reader("input", batches),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_exclude=kept,
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=large,
    )
    for leftover in prepared.parent.glob(f"{prepared.name}*"):
        leftover.unlink()
    log.info("Quantised %d MatMuls of the %s tower to int8 (%d kept in fp32)", len(weighted), kind, len(kept))


def int8_tower(loader: TowerLoader, kind: str, entry: Entry, *, threads: int, spin: bool) -> OrtTower:
    """The entry's int8 tower, quantised first if this entry has none yet."""
    name = f"int8-{kind}"
    found = entry.derived(name)
    if found is None:
        cache = loader.cache
        key_folder = entry.path.name
        with cache.lock_folder(key_folder):
            found = ExportCache.reread(entry).derived(name)
            if found is None:
                found = _make(loader, cache, entry, kind, name)
    mode = TowerMode("int8", float(found["cosine"]))
    if mode.cosine is not None and mode.cosine < COSINE_GUARD:
        log.warning("%s tower in int8 as asked: cosine to fp32 %.5f on these weights", kind, mode.cosine)
    return OrtTower(kind, entry.file(found["file"]), mode, threads=threads, spin=spin)


def _make(loader: TowerLoader, cache: ExportCache, entry: Entry, kind: str, name: str) -> dict[str, Any]:
    began = time.perf_counter()
    variant = loader.variant
    if kind == "image":
        batches = calibration_images(variant.image_size, count=64)
    else:
        tokens = loader.tokenizer()(list(CAPTIONS))
        batches = [tokens[i : i + 1] for i in range(len(tokens))]
    staged = entry.path / f".{name}.staging.onnx"
    quantize_tower(entry.file(TOWER_FILES[kind]), staged, kind, batches)
    probe = probe_inputs(variant, loader.tokenizer())[kind]
    cosine = min_cosine(loader.reference(entry, kind), OrtTower(kind, staged, TowerMode("int8"), threads=0)(probe))
    log.info(
        "%s %s tower int8: cosine to torch fp32 %.5f on the probe set (quantised in %.0f s)",
        variant.version_id,
        kind,
        cosine,
        time.perf_counter() - began,
    )
    details = {"file": f"{kind}.int8.onnx", "cosine": cosine}
    return cache.add_derived(entry, name, staged, details).manifest["derived"][name]
