"""Tag and screen a batch of images: decode, detect and preprocess in worker threads while the
tagger infers the previous batch; moderation reads the detector and the raw model scores."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.body_detector import BodyDetector, Detection
from services.tagger.base import AnalysedImage, Tagger
from services.tagger.errors import TaggerError
from services.tagger.images import ImageSource, decode_image
from services.tagger.moderation import ModerationPolicy, ModerationVerdict
from services.tagger.options import TaggingOptions
from services.tagger.pipeline import overlapped_batches
from services.tagger.runtime import RuntimeOptions
from services.tagger.tags import Tag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageResult:
    index: int  # position in the request
    tags: tuple[Tag, ...] = ()
    ratings: Mapping[str, float] = field(default_factory=dict)  # raw rating scores (WD models)
    verdict: ModerationVerdict | None = None  # None when screening is off or the image failed
    error: str | None = None
    error_reason: str | None = None  # TaggerError.reason codes, or INTERNAL

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def caption(self) -> str:
        return ", ".join(tag.name for tag in self.tags)


@dataclass(frozen=True)
class _Prepared:
    payload: Any
    detections: tuple[Detection, ...]


class TaggingEngine:
    """Thread-safe; one engine per loaded tagger is enough for a whole service."""

    def __init__(
        self,
        tagger: Tagger,
        *,
        policy: ModerationPolicy | None = None,
        screen: bool = True,
        detector: BodyDetector | None = None,
        runtime: RuntimeOptions | None = None,
    ) -> None:
        self.tagger = tagger
        self.policy = (policy or ModerationPolicy()) if screen else None
        self.runtime = runtime or RuntimeOptions()
        wants_detector = tagger.needs_detections or self.policy is not None
        self._detector = (detector or BodyDetector()) if wants_detector else None
        self._workers = self.runtime.resolved_prepare_workers()

    def iter_tag(
        self, images: Iterable[ImageSource], options: TaggingOptions | None = None, *, screen: bool = True
    ) -> Iterator[ImageResult]:
        """Results as they complete (not in input order; `index` says which image). `screen=False`
        skips the verdict for this call (and the detector, unless the tagger needs it)."""
        options = options or TaggingOptions()
        policy = self.policy if screen else None
        detect = self._detector is not None and (self.tagger.needs_detections or policy is not None)
        for index, outcome in overlapped_batches(
            images,
            lambda source: self._prepare(source, detect=detect),
            lambda batch: self._finish(batch, options, policy),
            batch_size=self.tagger.batch_size(self.runtime),
            workers=self._workers,
        ):
            if isinstance(outcome, Exception):
                reason, message = self._describe(index, outcome)
                yield ImageResult(index=index, error=message, error_reason=reason)
            else:
                yield ImageResult(index=index, **outcome)

    def tag(
        self, images: Sequence[ImageSource], options: TaggingOptions | None = None, *, screen: bool = True
    ) -> list[ImageResult]:
        """Results in input order."""
        return sorted(self.iter_tag(images, options, screen=screen), key=lambda result: result.index)

    def _prepare(self, source: ImageSource, *, detect: bool) -> _Prepared:
        image = decode_image(source)
        detections = tuple(self._detector.detect(image.rgb)) if detect and self._detector else ()
        return _Prepared(self.tagger.prepare(AnalysedImage(image, detections)), detections)

    def _finish(
        self, batch: list[_Prepared], options: TaggingOptions, policy: ModerationPolicy | None
    ) -> list[dict[str, Any]]:
        predictions = self.tagger.infer([item.payload for item in batch])
        watched = policy.watched_tags if policy else ()
        finished = []
        for item, prediction in zip(batch, predictions, strict=True):
            ratings = prediction.ratings()
            verdict = None
            if policy is not None:
                verdict = policy.evaluate(item.detections, ratings, prediction.scores_for(watched))
            finished.append({"tags": tuple(prediction.tags(options)), "ratings": ratings, "verdict": verdict})
        return finished

    def _describe(self, index: int, error: Exception) -> tuple[str, str]:
        if isinstance(error, TaggerError):
            return error.reason, str(error)
        log.error("tagging image %d failed", index, exc_info=error)
        return "INTERNAL", f"internal error while tagging: {type(error).__name__}: {error}"
