"""The PE-Core variants pe-search serves, keyed by Roboflow's version ids."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import UnknownModelError

DEFAULT_VERSION_ID = "PE-Core-L14-336"

# PE's own preprocessing, whatever the weights source: open_clip only applies it
# when its pretrained config is loaded, so it is pinned here instead.
PE_MEAN = (0.5, 0.5, 0.5)
PE_STD = (0.5, 0.5, 0.5)
PE_INTERPOLATION = "bilinear"
PE_RESIZE_MODE = "squash"


@dataclass(frozen=True)
class Variant:
    version_id: str
    open_clip_name: str
    image_size: int
    patch_size: int
    dim: int
    context_length: int

    @property
    def hub_repo(self) -> str:
        """The open_clip-format weights repository on the Hugging Face hub."""
        return f"timm/{self.open_clip_name}"

    @property
    def meta_repo(self) -> str:
        """Meta's original checkpoint repository (file `<version id>.pt`)."""
        return f"facebook/{self.version_id}"


VARIANTS: dict[str, Variant] = {
    v.version_id: v
    for v in (
        Variant("PE-Core-T16-384", "PE-Core-T-16-384", 384, 16, 512, 32),
        Variant("PE-Core-S16-384", "PE-Core-S-16-384", 384, 16, 512, 32),
        Variant("PE-Core-B16-224", "PE-Core-B-16", 224, 16, 1024, 32),
        Variant("PE-Core-L14-336", "PE-Core-L-14-336", 336, 14, 1024, 32),
        Variant("PE-Core-G14-448", "PE-Core-bigG-14-448", 448, 14, 1280, 72),
    )
}


def get_variant(version_id: str) -> Variant:
    try:
        return VARIANTS[version_id]
    except KeyError:
        raise UnknownModelError(version_id, list(VARIANTS)) from None
