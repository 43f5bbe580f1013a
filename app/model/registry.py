"""Which PE-Core variants are resident: the default loads at start-up, others on first use."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial

from app.model.encoder import EncoderInfo, PEEncoder
from app.model.loading import KINDS
from app.model.variants import get_variant
from app.settings import Settings

log = logging.getLogger(__name__)


class ModelRegistry:
    """Loaded encoders, least recently used evicted past `max_loaded_models`; the default stays."""

    def __init__(self, settings: Settings, *, on_forward: Callable[[str, str, int, float], None] | None = None) -> None:
        self.settings = settings
        # Given to each encoder, bound to its version id: (model, kind, items, seconds) per forward pass.
        self.on_forward = on_forward
        self.default_id = settings.model
        self._encoders: OrderedDict[str, PEEncoder] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self.load_error: str | None = None

    def _new_encoder(self, version_id: str) -> PEEncoder:
        return PEEncoder(
            get_variant(version_id),
            weights=self.settings.weights,
            device=self.settings.device,
            runtime=self.settings.runtime,
            cache_dir=self.settings.cache_dir,
            export_dir=self.settings.export_dir,
            batch_size=self.settings.inference_batch,
            image_precision=self.settings.image_precision,
            text_precision=self.settings.text_precision,
            compile=self.settings.compile,
            threads=self.settings.torch_threads,
            workers=self.settings.workers,
            on_forward=partial(self.on_forward, version_id) if self.on_forward else None,
        )

    def get(self, version_id: str | None = None, *, towers: Sequence[str] = KINDS) -> PEEncoder:
        """The encoder for a version id with `towers` loaded (blocking); the others load on first use."""
        version_id = version_id or self.default_id
        get_variant(version_id)  # unknown ids fail here, before any lock or load
        with self._lock:
            encoder = self._encoders.get(version_id)
            if encoder is not None:
                self._encoders.move_to_end(version_id)
        if encoder is not None:
            return encoder.load(towers)
        with self._lock:
            load_lock = self._load_locks.setdefault(version_id, threading.Lock())
        with load_lock:
            with self._lock:
                if version_id in self._encoders:
                    return self._encoders[version_id]
            encoder = self._new_encoder(version_id).load(towers)
            with self._lock:
                self._encoders[version_id] = encoder
                self._evict()
        if encoder.loaded:
            log.info("Model %s ready on %s", version_id, encoder.info.device)
        return encoder

    def load_default(self) -> None:
        """Load the default model, recording (not raising) a failure so /ready can report it."""
        try:
            self.get(self.default_id)
            self.load_error = None
        except Exception as exc:  # noqa: BLE001 - start-up must survive and report any failure
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("Default model %s failed to load: %s", self.default_id, self.load_error)

    def _evict(self) -> None:
        while len(self._encoders) > self.settings.max_loaded_models:
            victim = next(v for v in self._encoders if v != self.default_id)
            del self._encoders[victim]
            log.info("Unloaded %s (PE_SEARCH_MAX_LOADED_MODELS=%d)", victim, self.settings.max_loaded_models)

    @property
    def ready(self) -> bool:
        with self._lock:
            return self.default_id in self._encoders

    def loaded(self) -> list[EncoderInfo]:
        with self._lock:
            return [encoder.info for encoder in self._encoders.values()]
