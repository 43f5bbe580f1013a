"""What a process needs to embed, without any store: built the same way by the server, the CLI and Ray actors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.media.fetch import UrlFetcher
from app.media.image_ref import ImageLoader
from app.model.registry import ModelRegistry
from app.settings import Settings

# (model, kind, items, seconds) after each forward pass.
ForwardObserver = Callable[[str, str, int, float], None]


@dataclass(frozen=True)
class Encoders:
    """What embeds, without any store: the model registry, and the guarded fetcher and loader for image inputs."""

    registry: ModelRegistry
    fetcher: UrlFetcher
    loader: ImageLoader


def build_encoders(settings: Settings, *, on_forward: ForwardObserver | None = None) -> Encoders:
    fetcher = UrlFetcher(settings.url_policy())
    loader = ImageLoader(fetcher, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    return Encoders(ModelRegistry(settings, on_forward=on_forward), fetcher, loader)
