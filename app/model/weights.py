"""Where a variant's weights come from, and how each checkpoint layout is loaded.

Three sources: the Hugging Face hub (open_clip's `timm/PE-Core-*` repos, cached),
a local checkpoint file (open_clip layout, or Meta's original `PE-Core-*.pt`
layout, converted on load), or random weights for tests and development.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from app.errors import WeightsError
from app.model.variants import Variant

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HUB = "hub"
RANDOM = "random"
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Seed for random weights, so every process building the same variant agrees.
RANDOM_WEIGHTS_SEED = 0


def describe_source(weights: str) -> str:
    """The weights source as /health reports it."""
    if weights in (HUB, RANDOM):
        return weights
    return f"file:{weights}"


def fetch_hub_checkpoint(variant: Variant, cache_dir: Path | None) -> str:
    """Download (or reuse from the cache) the open_clip weights for a variant."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(variant.open_clip_name, "meta")
    if not cfg:
        raise WeightsError(f"open_clip knows no 'meta' weights for {variant.open_clip_name}")
    try:
        return download_pretrained(cfg, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise WeightsError(
            f"Could not download weights for {variant.version_id} from the hub "
            f"({variant.hub_repo}): {exc}. On an offline host, set PE_SEARCH_WEIGHTS "
            "to a local checkpoint file."
        ) from exc


def cached_hub_checkpoint(variant: Variant, cache_dir: Path | None) -> str | None:
    """The cached hub checkpoint path for a variant, or None; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    for filename in OPEN_CLIP_WEIGHT_FILES:
        found = try_to_load_from_cache(variant.hub_repo, filename, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(found, str):
            return found
    return None


def file_digest(path: str | Path) -> str:
    """The sha256 of a weights file: what identifies the weights an export was made from. A file the hub
    cached is named by its sha256 already (a blob of an LFS repository), so it is not read again."""
    resolved = Path(path).resolve()
    if len(resolved.name) == 64 and all(c in "0123456789abcdef" for c in resolved.name):
        return resolved.name
    digest = hashlib.sha256()
    with resolved.open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights_file(model: torch.nn.Module, path: str | Path) -> None:
    """Load a checkpoint file of either layout into an open_clip PE-Core model."""
    from open_clip.factory import load_checkpoint, load_state_dict

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Checkpoint file not found: {path}")
    try:
        state = load_state_dict(str(path), device="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable files all get one message
        raise WeightsError(f"Could not read checkpoint {path}: {exc}") from exc
    state = _unwrap(state)
    try:
        if "visual.conv1.weight" in state:
            log.info("Checkpoint %s is in Meta's original PE layout; converting", path)
            model.load_state_dict(convert_meta_state_dict(state, model), strict=True)
        else:
            load_checkpoint(model, str(path), strict=True, weights_only=True)
    except RuntimeError as exc:
        raise WeightsError(f"Checkpoint {path} does not fit this variant: {exc}") from exc


def _unwrap(state: dict) -> dict:
    for key in ("state_dict", "model", "weights"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def convert_meta_state_dict(state: dict, model: torch.nn.Module) -> dict:
    """Map Meta's `CLIP` state dict (perception_models) onto open_clip's layout.

    The vision tower goes through timm's own PE converter; Meta's text tower uses
    the names open_clip's text transformer has, one level up.
    """
    from timm.models.eva import checkpoint_filter_fn

    trunk: torch.nn.Module = model.get_submodule("visual.trunk")
    visual = checkpoint_filter_fn({k: v for k, v in state.items() if k.startswith("visual.")}, trunk)
    trunk_keys = trunk.state_dict().keys()
    out = {}
    for key, value in visual.items():
        # Meta stores RoPE frequencies; timm recomputes them, so they are derived state.
        if key not in trunk_keys and "rope" in key:
            continue
        out[f"visual.trunk.{key}"] = value
    for key, value in state.items():
        if key == "logit_scale":
            out[key] = value.reshape(model.logit_scale.shape)
        elif not key.startswith("visual."):
            out[f"text.{key}"] = value
    return out
