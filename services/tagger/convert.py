"""Between the tagger library's types and the kiln.v1 messages of tagger.proto."""

from __future__ import annotations

import datetime as dt
import math
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp

from kiln.v1 import tagger_pb2 as pb
from kiln.v1 import tagging_types_pb2 as ttpb
from services.common.errors import FieldViolation, invalid, invalid_field
from services.tagger.base import TaggerKind
from services.tagger.builtin_tagger import BUILTIN_TAGGER_NAME
from services.tagger.engine import ImageResult
from services.tagger.moderation import Decision, ModerationVerdict, SignalSource
from services.tagger.options import TaggingOptions
from services.tagger.registry import NAME_PATTERN, InstalledTagger
from services.tagger.tags import Tag, TagCategory

RESOURCE_PREFIX = "taggers/"
MAX_UNDESIRED_TAGS = 1000
MAX_TAG_LENGTH = 200

KIND_TO_PB = {TaggerKind.WD14: pb.TAGGER_KIND_WD14, TaggerKind.BUILTIN: pb.TAGGER_KIND_BUILTIN}
CATEGORY_TO_PB = {
    TagCategory.GENERAL: ttpb.TAG_CATEGORY_GENERAL,
    TagCategory.CHARACTER: ttpb.TAG_CATEGORY_CHARACTER,
    TagCategory.RATING: ttpb.TAG_CATEGORY_RATING,
}
DECISION_TO_PB = {
    Decision.ALLOW: ttpb.MODERATION_DECISION_ALLOW,
    Decision.REVIEW: ttpb.MODERATION_DECISION_REVIEW,
    Decision.BLOCK: ttpb.MODERATION_DECISION_BLOCK,
}
SOURCE_TO_PB = {
    SignalSource.DETECTOR: ttpb.MODERATION_SIGNAL_SOURCE_DETECTOR,
    SignalSource.RATING: ttpb.MODERATION_SIGNAL_SOURCE_RATING,
    SignalSource.TAG: ttpb.MODERATION_SIGNAL_SOURCE_TAG,
}


def resource_name(tagger: str) -> str:
    return RESOURCE_PREFIX + tagger


def parse_resource_name(name: str, field: str = "name") -> str:
    tagger = name.removeprefix(RESOURCE_PREFIX)
    if not name.startswith(RESOURCE_PREFIX) or not (tagger == BUILTIN_TAGGER_NAME or NAME_PATTERN.match(tagger)):
        raise invalid_field(field, f"{name!r} is not a tagger name; expected `taggers/{{tagger}}`", "INVALID_NAME")
    return tagger


def tagger_message(info: InstalledTagger, preferred: str) -> pb.Tagger:
    message = pb.Tagger(
        name=resource_name(info.name),
        kind=KIND_TO_PB[info.kind],
        description=info.description,
        tag_count=info.tag_count,
        input_size=info.input_size or 0,
        fixed_batch_size=info.fixed_batch or 0,
        preferred=info.name == preferred,
        model_sha256=info.model_sha256 or "",
    )
    if info.installed_at:
        stamp = Timestamp()
        stamp.FromDatetime(dt.datetime.fromisoformat(info.installed_at))
        message.install_time.CopyFrom(stamp)
    return message


_Threshold = Literal["general_threshold", "character_threshold"]
_Flag = Literal["sort_by_confidence", "character_first", "include_rating", "replace_underscores"]
_THRESHOLDS: tuple[_Threshold, ...] = ("general_threshold", "character_threshold")
_OPTIONAL_FLAGS: tuple[_Flag, ...] = ("sort_by_confidence", "character_first", "include_rating", "replace_underscores")


def options_from(message: ttpb.TaggingOptions) -> TaggingOptions:
    """Validated library options; unset optional fields keep the field's defaults."""
    violations = []
    values: dict[str, object] = {}
    for field in _THRESHOLDS:
        if message.HasField(field):
            value = getattr(message, field)
            if math.isnan(value) or not 0.0 <= value <= 1.0:
                violations.append(FieldViolation(f"options.{field}", "must be between 0 and 1", "OUT_OF_RANGE"))
            values[field] = value
    for flag in _OPTIONAL_FLAGS:
        if message.HasField(flag):
            values[flag] = getattr(message, flag)
    if message.max_tags < 0:
        violations.append(FieldViolation("options.max_tags", "must not be negative (0: no limit)", "OUT_OF_RANGE"))
    if len(message.undesired_tags) > MAX_UNDESIRED_TAGS:
        violations.append(
            FieldViolation("options.undesired_tags", f"at most {MAX_UNDESIRED_TAGS} tags", "TOO_MANY_TAGS")
        )
    for i, tag in enumerate(message.undesired_tags):
        if not tag.strip() or len(tag) > MAX_TAG_LENGTH:
            violations.append(
                FieldViolation(f"options.undesired_tags[{i}]", f"must be 1-{MAX_TAG_LENGTH} characters", "INVALID_TAG")
            )
    if violations:
        raise invalid(violations)
    return TaggingOptions.model_validate({
        **values,
        "general_mcut": message.general_mcut,
        "character_mcut": message.character_mcut,
        "max_tags": message.max_tags or None,
        "undesired_tags": tuple(message.undesired_tags),
    })


def tag_message(tag: Tag) -> ttpb.Tag:
    return ttpb.Tag(name=tag.name, score=tag.score, category=CATEGORY_TO_PB[tag.category])


def verdict_message(verdict: ModerationVerdict) -> ttpb.ModerationVerdict:
    return ttpb.ModerationVerdict(
        decision=DECISION_TO_PB[verdict.decision],
        findings=[
            ttpb.ModerationFinding(
                source=SOURCE_TO_PB[f.source], label=f.label, score=f.score, decision=DECISION_TO_PB[f.decision]
            )
            for f in verdict.findings
        ],
    )


def result_message(result: ImageResult) -> pb.ImageTagging:
    message = pb.ImageTagging(
        index=result.index,
        tags=[tag_message(tag) for tag in result.tags],
        ratings=[
            ttpb.Tag(name=name, score=score, category=ttpb.TAG_CATEGORY_RATING)
            for name, score in result.ratings.items()
        ],
        error_reason=result.error_reason or "",
        error_message=result.error or "",
    )
    if result.verdict is not None:
        message.verdict.CopyFrom(verdict_message(result.verdict))
    return message
