"""Export a loaded model's towers to ONNX, once, and check them against torch fp32 before they may serve.

Runs where torch is loaded already (the first start of a variant, `pe-search export-model`); later
processes load the entry it publishes without torch (app/model/export_cache.py).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.model.export_cache import OPSET, TOWER_FILES, Entry, ExportCache, ExportKey
from app.model.onnx_towers import OrtTower
from app.model.precision import PARITY_GUARD, TowerMode, min_cosine
from app.model.probes import PROBE_FILE, probe_inputs
from app.model.tokenizer import PETokenizer, tokenizer_json
from app.model.torch_towers import TorchModel, TorchTower

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"


def export_tower(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """The TorchScript exporter, with a dynamic batch axis: measured to give ONNX Runtime graphs that match
    torch to cosine 1.00000 on PE's towers (RoPE and the text tower's argmax pooling included)."""
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings, on every export
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        )


def export_entry(model: TorchModel, cache: ExportCache, key: ExportKey) -> Entry:
    """Export both towers, measure each against torch fp32 on the probe set, and publish the entry."""
    variant = model.variant
    tokenizer_text = tokenizer_json(variant.context_length)
    probes = probe_inputs(variant, PETokenizer.from_json(tokenizer_text, variant.context_length))
    with cache.staging() as staged:
        (staged / TOKENIZER_FILE).write_text(tokenizer_text, encoding="utf-8")
        references: dict[str, np.ndarray] = {}
        parity: dict[str, float] = {}
        for kind, name in TOWER_FILES.items():
            began = time.perf_counter()
            fp32 = model.fp32(kind)
            export_tower(fp32, torch.from_numpy(probes[kind][:2]).to(model.device), staged / name)
            references[kind] = TorchTower(kind, fp32, model.device, TowerMode("fp32"))(probes[kind])
            exported = OrtTower(kind, staged / name, TowerMode("fp32"), threads=0)(probes[kind])
            parity[kind] = min_cosine(references[kind], exported)
            log.info(
                "Exported the %s %s tower to ONNX in %.1f s: cosine to torch fp32 %.7f (guard %.5f)",
                variant.version_id,
                kind,
                time.perf_counter() - began,
                parity[kind],
                PARITY_GUARD,
            )
        np.savez(staged / PROBE_FILE, image_reference=references["image"], text_reference=references["text"])
        manifest: dict[str, Any] = {
            "variant": variant.version_id,
            "dim": variant.dim,
            "logit_scale": model.logit_scale,
            "parity": parity,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return cache.publish(staged, key, manifest)
