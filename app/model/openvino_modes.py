"""An OpenVINO tower in the mode `auto` or the setting asks for, without re-measuring it at every start.

The bf16 guard (cosine to torch fp32 on the probe set) is measured once per entry and OpenVINO version
and kept in the entry's manifest; OpenVINO's own compiled-model cache sits in the entry, so a later
start loads a compiled tower (B16 text: 0.45 s instead of 2-3 s) and runs no probe.
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING

from app.model import precision
from app.model.export_cache import TOWER_FILES, Entry
from app.model.onnx_towers import OpenVinoTower
from app.model.precision import TowerMode, min_cosine
from app.model.probes import probe_inputs

if TYPE_CHECKING:
    from app.model.loading import TowerLoader


def openvino_tower(loader: TowerLoader, kind: str, entry: Entry, *, requested: str, threads: int) -> OpenVinoTower:
    path = entry.file(TOWER_FILES[kind])
    compiled_cache = entry.path / "openvino"
    version = importlib.metadata.version("openvino")
    built: dict[str, OpenVinoTower] = {}

    def build(mode: str) -> OpenVinoTower:
        if mode not in built:
            built[mode] = OpenVinoTower(kind, path, TowerMode(mode), threads=threads, cache_dir=compiled_cache)
        return built[mode]

    def cosine(mode: str) -> float:
        name = f"openvino-{version}-{mode}-{kind}"
        remembered = entry.manifest.get("checks", {}).get(name)
        if remembered is not None:
            return float(remembered)
        probe = probe_inputs(loader.variant, loader.tokenizer())[kind]
        measured = min_cosine(loader.reference(entry, kind), build(mode)(probe))
        loader.cache.record_check(entry, name, measured)
        return measured

    candidates = ["bf16"] if precision.cpu_has_native_bf16() else []
    mode = precision.choose_by_cosine(requested, kind=kind, candidates=candidates, cosine=cosine)
    if mode.precision == "fp32":
        mode = TowerMode("fp32", entry.parity(kind))
    tower = build(mode.precision)
    tower.mode = mode
    return tower
