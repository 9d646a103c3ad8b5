"""Booru tags from the NudeNet detector's findings: who is in the picture and what is exposed.

Thresholds were set on real photos (scikit-image's samples): true faces score 0.55-0.82,
the best false face seen was 0.12 (a cat) and the best false body part 0.32 (a coffee cup
reported as BUTTOCKS_EXPOSED), so faces count from 0.45 and body parts from 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.body_detector import FACE_LABELS, Detection
from services.tagger.tags import Tag, TagCategory

FACE_THRESHOLD = 0.45
BODY_PART_THRESHOLD = 0.5
# Danbooru counts people up to five, then says "6+".
_MAX_COUNTED = 5

EXPOSURE_TAGS: dict[str, tuple[str, ...]] = {
    "FEMALE_BREAST_EXPOSED": ("breasts", "nipples"),
    "FEMALE_GENITALIA_EXPOSED": ("pussy",),
    "MALE_GENITALIA_EXPOSED": ("penis",),
    "ANUS_EXPOSED": ("anus",),
    "BUTTOCKS_EXPOSED": ("ass",),
    "MALE_BREAST_EXPOSED": ("topless_male",),
    "BELLY_EXPOSED": ("navel", "midriff"),
    "ARMPITS_EXPOSED": ("armpits",),
    "FEET_EXPOSED": ("barefoot",),
}
EXPLICIT_LABELS = frozenset({"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED"})
QUESTIONABLE_LABELS = frozenset({"FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"})


def _general(name: str, score: float) -> Tag:
    return Tag(name, score, TagCategory.GENERAL)


def _count_tag(count: int, singular: str, plural: str) -> str:
    if count == 1:
        return f"1{singular}"
    return f"{count}{plural}" if count <= _MAX_COUNTED else f"6+{plural}"


def people_tags(detections: Sequence[Detection]) -> list[Tag]:
    """`1girl`…`6+girls`, `1boy`…`6+boys`, `multiple girls/boys`, `solo`, or `no humans`."""
    girls = sorted(d.score for d in detections if d.label == "FACE_FEMALE" and d.score >= FACE_THRESHOLD)
    boys = sorted(d.score for d in detections if d.label == "FACE_MALE" and d.score >= FACE_THRESHOLD)
    tags: list[Tag] = []
    # A count is only as certain as its least certain face.
    if girls:
        tags.append(_general(_count_tag(len(girls), "girl", "girls"), girls[0]))
    if boys:
        tags.append(_general(_count_tag(len(boys), "boy", "boys"), boys[0]))
    if len(girls) >= 2:
        tags.append(_general("multiple_girls", girls[0]))
    if len(boys) >= 2:
        tags.append(_general("multiple_boys", boys[0]))
    if len(girls) + len(boys) == 1:
        tags.append(_general("solo", (girls or boys)[0]))
    body_parts = any(d.label not in FACE_LABELS and d.score >= BODY_PART_THRESHOLD for d in detections)
    if not girls and not boys and not body_parts:
        # Every detector class is a human body part, so its best (sub-threshold) score is the doubt.
        tags.append(_general("no_humans", 1.0 - max((d.score for d in detections), default=0.0)))
    return tags


def exposure_tags(detections: Sequence[Detection]) -> list[Tag]:
    best = _best_by_label(detections)
    tags: list[Tag] = []
    for label, names in EXPOSURE_TAGS.items():
        score = best.get(label, 0.0)
        if score >= BODY_PART_THRESHOLD:
            tags.extend(_general(name, score) for name in names)
    return tags


def rating_from_detections(detections: Sequence[Detection]) -> Tag:
    """A rough rating: `explicit` for exposed genitals/anus, `questionable` for exposed breasts or
    buttocks, else `general` (scored by how far the strongest exposure signal stays below)."""
    best = _best_by_label(detections)
    explicit = max((best.get(label, 0.0) for label in EXPLICIT_LABELS), default=0.0)
    if explicit >= BODY_PART_THRESHOLD:
        return Tag("explicit", explicit, TagCategory.RATING)
    questionable = max((best.get(label, 0.0) for label in QUESTIONABLE_LABELS), default=0.0)
    if questionable >= BODY_PART_THRESHOLD:
        return Tag("questionable", questionable, TagCategory.RATING)
    return Tag("general", 1.0 - max(explicit, questionable), TagCategory.RATING)


def _best_by_label(detections: Sequence[Detection]) -> dict[str, float]:
    best: dict[str, float] = {}
    for detection in detections:
        best[detection.label] = max(best.get(detection.label, 0.0), detection.score)
    return best
