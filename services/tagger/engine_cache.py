"""One loaded TaggingEngine per tagger, reloaded when the installed files change."""

from __future__ import annotations

import logging
import threading

from services.common.body_detector import BodyDetector
from services.tagger.engine import TaggingEngine
from services.tagger.errors import TaggerNotFound
from services.tagger.moderation import ModerationPolicy
from services.tagger.registry import TaggerRegistry
from services.tagger.runtime import RuntimeOptions

log = logging.getLogger(__name__)


class EngineCache:
    """Blocking (loads ONNX sessions): call it off the event loop. Thread-safe."""

    def __init__(
        self, registry: TaggerRegistry, detector: BodyDetector, policy: ModerationPolicy, runtime: RuntimeOptions
    ) -> None:
        self._registry = registry
        self._detector = detector
        self._policy = policy
        self._runtime = runtime
        self._lock = threading.Lock()
        self._engines: dict[str, tuple[tuple[str | None, str | None], TaggingEngine]] = {}

    def get(self, name: str) -> TaggingEngine:
        try:
            info = self._registry.get(name)
        except TaggerNotFound:
            with self._lock:
                self._engines.pop(name, None)  # removed by an operator: free its session
            raise
        # An operator's `install --replace` changes both; the next request loads the new model.
        version = (info.installed_at, info.model_sha256)
        with self._lock:
            cached = self._engines.get(name)
            if cached is not None and cached[0] == version:
                return cached[1]
            engine = TaggingEngine(
                self._registry.load(name), policy=self._policy, detector=self._detector, runtime=self._runtime
            )
            self._engines[name] = (version, engine)
            log.info("tagger loaded", extra={"fields": {"tagger": name, "installed_at": info.installed_at}})
            return engine
