"""What the engine needs from a tagger, whichever kind it is."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from services.common.body_detector import Detection
from services.tagger.images import DecodedImage
from services.tagger.options import TaggingOptions
from services.tagger.runtime import RuntimeOptions
from services.tagger.tags import Tag


class TaggerKind(StrEnum):
    WD14 = "wd14"
    BUILTIN = "builtin"


@dataclass(frozen=True)
class TaggerInfo:
    name: str
    kind: TaggerKind
    tag_count: int
    description: str
    input_size: int | None = None
    fixed_batch: int | None = None


@dataclass(frozen=True)
class AnalysedImage:
    """A decoded image with the body detector's findings (computed once, shared by the built-in
    tagger and moderation)."""

    image: DecodedImage
    detections: tuple[Detection, ...]


class Prediction(Protocol):
    def tags(self, options: TaggingOptions) -> list[Tag]:
        """The tag list the user sees, shaped by the request's options."""
        ...

    def ratings(self) -> dict[str, float]:
        """Raw model scores of the rating labels (`general`, `sensitive`, `questionable`,
        `explicit`); empty when the tagger has no rating model."""
        ...

    def scores_for(self, names: Iterable[str]) -> dict[str, float]:
        """Raw model scores of the named tags, whatever the options: moderation reads these so
        that a user's thresholds or undesired tags can never hide a signal from it."""
        ...


class Tagger(Protocol):
    @property
    def info(self) -> TaggerInfo: ...

    @property
    def needs_detections(self) -> bool: ...

    def batch_size(self, runtime: RuntimeOptions) -> int:
        """Images per `infer` call."""
        ...

    def prepare(self, image: AnalysedImage) -> Any:
        """Per-image CPU work; runs in worker threads, so it must be thread-safe."""
        ...

    def infer(self, prepared: Sequence[Any]) -> Sequence[Prediction]:
        """Batched work, one `prepare` result per image, in order. A read-only sequence, so a
        tagger may return a list of its own prediction type."""
        ...
