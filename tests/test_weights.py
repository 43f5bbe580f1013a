"""Loading real checkpoint files: open_clip layout, Meta's original layout, and the hub cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from app.api.app import create_app
from app.errors import WeightsError
from app.model.encoder import PEEncoder
from app.model.variants import get_variant
from app.model.weights import cached_hub_checkpoint
from app.settings import Settings
from tests.support.images import photo

VARIANT = get_variant("PE-Core-T16-384")
IMAGES = [photo(320, 240, seed=s) for s in range(2)]
TEXTS = ["a photo of a cat", "a dog"]
# The references are open_clip's fp32 embeddings: the loaded weights are compared in fp32, whatever
# `auto` would pick on this CPU (bf16 for images where the CPU has native bf16).
FP32 = {"image_precision": "fp32", "text_precision": "fp32"}


@pytest.fixture(scope="module")
def trained_like() -> open_clip.CustomTextCLIP:
    """A T16 model with weights unlike random mode's (other seed, non-trivial logit scale)."""
    torch.manual_seed(1234)
    model = open_clip.create_model(VARIANT.open_clip_name, pretrained=None).eval()
    with torch.no_grad():
        model.logit_scale.fill_(4.6)
        # Meta's layout has no projection bias; keep the model representable in both layouts.
        model.visual.trunk.head.bias.zero_()
    return model


def reference_embeddings(model: open_clip.CustomTextCLIP) -> tuple[np.ndarray, np.ndarray]:
    """What open_clip gives with PE's transform: the expected output for a checkpoint."""
    tokenizer = open_clip.get_tokenizer(VARIANT.open_clip_name)
    transform = open_clip.image_transform(
        384, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", resize_mode="squash"
    )
    with torch.no_grad():
        images = model.encode_image(torch.stack([transform(i) for i in IMAGES]), normalize=True)
        texts = model.encode_text(tokenizer(TEXTS), normalize=True)
    return images.numpy(), texts.numpy()


def assert_same_model(encoder: PEEncoder, model: open_clip.CustomTextCLIP) -> None:
    images, texts = reference_embeddings(model)
    np.testing.assert_allclose(encoder.embed_images(IMAGES), images, atol=1e-5)
    np.testing.assert_allclose(encoder.embed_texts(TEXTS), texts, atol=1e-5)
    assert encoder.logit_scale == pytest.approx(float(np.exp(4.6)), rel=1e-5)


def to_meta_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of the loader's conversion, written out independently from Meta's module names."""
    out: dict[str, torch.Tensor] = {}
    block_names = {
        "norm1": "ln_1",
        "norm2": "ln_2",
        "attn.qkv.weight": "attn.in_proj_weight",
        "attn.qkv.bias": "attn.in_proj_bias",
        "attn.proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for key, value in state.items():
        if key.startswith("text."):
            out[key[len("text.") :]] = value
        elif key == "logit_scale":
            out[key] = value
        elif key.startswith("visual.trunk.blocks."):
            rest = key[len("visual.trunk.blocks.") :]
            for old, new in block_names.items():
                rest = rest.replace(old, new)
            out[f"visual.transformer.resblocks.{rest}"] = value
    trunk = {k[len("visual.trunk.") :]: v for k, v in state.items() if k.startswith("visual.trunk.")}
    out["visual.conv1.weight"] = trunk["patch_embed.proj.weight"]
    out["visual.class_embedding"] = trunk["cls_token"].reshape(-1)
    out["visual.positional_embedding"] = trunk["pos_embed"][0]
    for ours, meta in (("norm_pre", "ln_pre"), ("norm", "ln_post"), ("attn_pool.norm", "attn_pool.layernorm")):
        for part in ("weight", "bias"):
            out[f"visual.{meta}.{part}"] = trunk[f"{ours}.{part}"]
    out["visual.attn_pool.probe"] = trunk["attn_pool.latent"]
    for part in ("weight", "bias"):
        out[f"visual.attn_pool.attn.in_proj_{part}"] = torch.cat(
            [trunk[f"attn_pool.q.{part}"], trunk[f"attn_pool.kv.{part}"]]
        )
        out[f"visual.attn_pool.attn.out_proj.{part}"] = trunk[f"attn_pool.proj.{part}"]
        out[f"visual.attn_pool.mlp.c_fc.{part}"] = trunk[f"attn_pool.mlp.fc1.{part}"]
        out[f"visual.attn_pool.mlp.c_proj.{part}"] = trunk[f"attn_pool.mlp.fc2.{part}"]
    out["visual.proj"] = trunk["head.weight"].t().contiguous()
    return out


def test_open_clip_checkpoint_gives_open_clip_embeddings(trained_like, tmp_path: Path) -> None:
    path = tmp_path / "pe-t16.pt"
    torch.save(trained_like.state_dict(), path)
    encoder = PEEncoder(VARIANT, weights=str(path), device="cpu", **FP32).load()
    assert_same_model(encoder, trained_like)
    assert encoder.info.weights == f"file:{path}" and not encoder.info.random_weights


def test_meta_original_checkpoint_is_converted(trained_like, tmp_path: Path) -> None:
    path = tmp_path / "PE-Core-T16-384.pt"
    meta = to_meta_layout(trained_like.state_dict())
    assert not any(k.startswith("visual.trunk") or k.startswith("text.") for k in meta)
    torch.save({f"module.{k}": v for k, v in meta.items()}, path)
    assert_same_model(PEEncoder(VARIANT, weights=str(path), device="cpu", **FP32).load(), trained_like)


@pytest.mark.slow
def test_hub_weights_load_from_the_cache_offline(trained_like, tmp_path: Path) -> None:
    snapshot = tmp_path / f"models--{VARIANT.hub_repo.replace('/', '--')}" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    assert cached_hub_checkpoint(VARIANT, tmp_path) is None
    save_file(
        {k: v.contiguous() for k, v in trained_like.state_dict().items()}, snapshot / "open_clip_model.safetensors"
    )
    assert cached_hub_checkpoint(VARIANT, tmp_path) == str(snapshot / "open_clip_model.safetensors")
    encoder = PEEncoder(VARIANT, weights="hub", cache_dir=tmp_path, device="cpu", **FP32).load()
    assert_same_model(encoder, trained_like)


def test_hub_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="PE_SEARCH_WEIGHTS"):
        PEEncoder(VARIANT, weights="hub", cache_dir=tmp_path, device="cpu").load()


def test_checkpoint_of_another_variant_is_refused(trained_like, tmp_path: Path) -> None:
    path = tmp_path / "t16.pt"
    torch.save(trained_like.state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit"):
        PEEncoder(get_variant("PE-Core-S16-384"), weights=str(path), device="cpu").load()


@pytest.mark.parametrize("content", [None, b"not a checkpoint"])
def test_missing_or_unreadable_checkpoint_is_refused(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "ckpt.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match="not found" if content is None else "Could not read"):
        PEEncoder(VARIANT, weights=str(path), device="cpu").load()


@pytest.mark.slow
def test_failed_default_load_keeps_server_up_and_not_ready(tmp_path: Path) -> None:
    settings = Settings(model=VARIANT.version_id, weights=str(tmp_path / "missing.pt"), device="cpu", data_dir=tmp_path)
    app = create_app(settings)
    with TestClient(app) as client:
        app.state.services.registry.load_default()  # the same load the start-up ran, run to completion here
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed" and "missing.pt" in ready.json()["load_error"]
        assert client.get("/health").status_code == 200
        response = client.post("/perception_encoder/embed_text", json={"text": "a cat"})
        assert response.status_code == 503 and "missing.pt" in response.json()["message"]
