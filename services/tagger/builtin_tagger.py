"""The tagger that works with nothing installed: the NudeNet detector (inside the `nudenet` wheel)
for people and exposure, plus pixel analysis. README.md lists every tag it can produce."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.tagger import body_tags, image_analysis
from services.tagger.base import AnalysedImage, TaggerInfo, TaggerKind
from services.tagger.options import TaggingOptions
from services.tagger.runtime import RuntimeOptions
from services.tagger.selection import arrange_tags
from services.tagger.tags import Tag, display_name

BUILTIN_TAGGER_NAME = "builtin"

PEOPLE_TAGS = (
    "1girl", *(f"{n}girls" for n in range(2, 6)), "6+girls",
    "1boy", *(f"{n}boys" for n in range(2, 6)), "6+boys",
    "multiple_girls", "multiple_boys", "solo", "no_humans",
)  # fmt: skip
ANALYSIS_TAGS = (
    "monochrome", "greyscale", "simple_background", "transparent_background",
    *(f"{c}_background" for c in (
        "white", "black", "grey", "red", "orange", "yellow", "green", "aqua", "blue", "purple", "pink", "brown",
    )),
    "wide_image", "tall_image",
)  # fmt: skip
EXPOSURE_TAGS = tuple(dict.fromkeys(name for names in body_tags.EXPOSURE_TAGS.values() for name in names))
RATING_TAGS = ("general", "questionable", "explicit")
ALL_TAGS = (*PEOPLE_TAGS, *EXPOSURE_TAGS, *ANALYSIS_TAGS)


@dataclass(frozen=True)
class BuiltinPrediction:
    candidates: tuple[Tag, ...]  # raw (underscored) names, natural order
    rating: Tag

    def tags(self, options: TaggingOptions) -> list[Tag]:
        # The general threshold still applies on top of the tagger's own calibrated cut-offs, so
        # a user asking for fewer, surer tags gets them. MCut needs a score distribution over a
        # whole vocabulary and is ignored here; there are no character tags.
        def shown(tag: Tag) -> Tag:
            return Tag(display_name(tag.name, replace_underscores=options.replace_underscores), tag.score, tag.category)

        kept = [shown(tag) for tag in self.candidates if tag.score > options.general_threshold]
        return arrange_tags(kept, shown(self.rating), options)

    def ratings(self) -> dict[str, float]:
        return {}  # a detector-derived rating is not a model score; moderation reads the detector itself

    def scores_for(self, names: Iterable[str]) -> dict[str, float]:
        return {}


class BuiltinTagger:
    needs_detections = True

    def __init__(self) -> None:
        self._info = TaggerInfo(
            name=BUILTIN_TAGGER_NAME,
            kind=TaggerKind.BUILTIN,
            tag_count=len(ALL_TAGS) + len(RATING_TAGS),
            description="offline default: NudeNet people/exposure detector + image analysis",
        )

    @property
    def info(self) -> TaggerInfo:
        return self._info

    def batch_size(self, runtime: RuntimeOptions) -> int:
        return runtime.batch_size

    def prepare(self, image: AnalysedImage) -> BuiltinPrediction:
        traits = image_analysis.measure(image.image)
        candidates = (
            *body_tags.people_tags(image.detections),
            *body_tags.exposure_tags(image.detections),
            *image_analysis.trait_tags(traits),
        )
        return BuiltinPrediction(candidates, body_tags.rating_from_detections(image.detections))

    def infer(self, prepared: Sequence[BuiltinPrediction]) -> list[BuiltinPrediction]:
        return list(prepared)
