"""The five PE-Core variants match open_clip's own configs (checked without building the big ones)."""

from __future__ import annotations

import open_clip
import pytest

from app.errors import UnknownModelError
from app.model.variants import DEFAULT_VERSION_ID, VARIANTS, get_variant
from app.settings import Settings

EXPECTED = {
    "PE-Core-T16-384": (512, 384, 32),
    "PE-Core-S16-384": (512, 384, 32),
    "PE-Core-B16-224": (1024, 224, 32),
    "PE-Core-L14-336": (1024, 336, 32),
    "PE-Core-G14-448": (1280, 448, 72),
}


def test_all_five_variants_are_served() -> None:
    assert set(VARIANTS) == set(EXPECTED)
    assert DEFAULT_VERSION_ID == "PE-Core-L14-336"


@pytest.mark.parametrize("version_id", sorted(EXPECTED))
def test_variant_matches_open_clip_config(version_id: str) -> None:
    dim, image_size, context = EXPECTED[version_id]
    variant = get_variant(version_id)
    config = open_clip.get_model_config(variant.open_clip_name)
    assert (variant.dim, variant.image_size, variant.context_length) == (dim, image_size, context)
    assert config["embed_dim"] == dim
    assert config["vision_cfg"]["image_size"] == image_size
    assert config["text_cfg"]["context_length"] == context
    assert open_clip.get_tokenizer(variant.open_clip_name).context_length == context
    assert "meta" in open_clip.list_pretrained_tags_by_model(variant.open_clip_name)


def test_unknown_variant_names_the_valid_ones() -> None:
    with pytest.raises(UnknownModelError) as excinfo:
        get_variant("PE-Core-X99")
    assert "PE-Core-L14-336" in str(excinfo.value) and "PE-Core-T16-384" in str(excinfo.value)


def test_roboflow_env_var_sets_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PE_SEARCH_MODEL", raising=False)
    monkeypatch.setenv("PERCEPTION_ENCODER_VERSION_ID", "PE-Core-B16-224")
    assert Settings().model == "PE-Core-B16-224"
    monkeypatch.setenv("PE_SEARCH_MODEL", "PE-Core-S16-384")
    assert Settings().model == "PE-Core-S16-384"


def test_settings_refuse_unknown_model_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        Settings(model="PE-Core-X99")
    with pytest.raises(ValueError, match="device"):
        Settings(device="tpu")
    assert Settings(device="cuda:1").device == "cuda:1"
