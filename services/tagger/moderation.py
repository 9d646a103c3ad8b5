"""Upload screening: allow / review / block, with the signals and scores behind the verdict.

Signals come from the NudeNet detector (always), and from a WD model's rating and tag scores
when one is the active tagger. A policy is a list of rules; each names a signal and the scores
at which it asks for review or blocks. The verdict is the strictest any rule reaches.

Why the defaults are what they are:
- NudeNet's small 320n model fires on innocent pictures at low scores: it reported
  BUTTOCKS_EXPOSED 0.32 on a photo of a coffee cup. Nothing below 0.5 triggers anything, and
  only exposed genitals/anus at 0.75+ block outright; exposed breasts/buttocks go to a human
  (nudity in art and photo studies is not by itself the pornography the seed forbids).
  Exposed male chests and feet are ignored.
- WD ratings are whole-image judgements trained on millions of rated pictures and the most
  reliable signal we have: `explicit` blocks at 0.6 and asks for review from 0.3;
  `questionable` asks for review from 0.6.
- WD tags: `guro` (Danbooru's gore tag) blocks at 0.6, reviews from 0.35; blood, injury,
  corpses, death and violence ask for review from 0.5-0.6 (they are common in fight scenes,
  so they are not blocked automatically).
Politics (also forbidden by the seed) cannot be judged by these models and is left to
reports and human review.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.body_detector import LABELS as DETECTOR_LABELS
from services.common.body_detector import Detection
from services.tagger.tags import tag_key


class Decision(IntEnum):
    """Ordered so that the strictest decision is the largest."""

    ALLOW = 0
    REVIEW = 1
    BLOCK = 2

    def __str__(self) -> str:
        return self.name.lower()


class SignalSource(StrEnum):
    DETECTOR = "detector"  # NudeNet class, e.g. FEMALE_GENITALIA_EXPOSED
    RATING = "rating"  # WD rating label: general, sensitive, questionable, explicit
    TAG = "tag"  # WD tag, e.g. guro


class ModerationRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source: SignalSource
    label: str = Field(min_length=1)
    review_at: float | None = Field(None, ge=0.0, le=1.0)
    block_at: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _coherent(self) -> ModerationRule:
        if self.review_at is None and self.block_at is None:
            raise ValueError(f"rule for {self.label!r} sets neither review_at nor block_at")
        if self.review_at is not None and self.block_at is not None and self.block_at < self.review_at:
            raise ValueError(f"rule for {self.label!r}: block_at {self.block_at} is below review_at {self.review_at}")
        if self.source == SignalSource.DETECTOR and self.label not in DETECTOR_LABELS:
            raise ValueError(f"{self.label!r} is not a detector class; known: {', '.join(DETECTOR_LABELS)}")
        return self

    def decide(self, score: float) -> Decision:
        if self.block_at is not None and score >= self.block_at:
            return Decision.BLOCK
        if self.review_at is not None and score >= self.review_at:
            return Decision.REVIEW
        return Decision.ALLOW


def _rule(source: SignalSource, label: str, review_at: float | None, block_at: float | None = None) -> ModerationRule:
    return ModerationRule(source=source, label=label, review_at=review_at, block_at=block_at)


_D, _R, _T = SignalSource.DETECTOR, SignalSource.RATING, SignalSource.TAG
DEFAULT_RULES: tuple[ModerationRule, ...] = (
    _rule(_D, "FEMALE_GENITALIA_EXPOSED", 0.5, 0.75),
    _rule(_D, "MALE_GENITALIA_EXPOSED", 0.5, 0.75),
    _rule(_D, "ANUS_EXPOSED", 0.5, 0.75),
    _rule(_D, "FEMALE_BREAST_EXPOSED", 0.5),
    _rule(_D, "BUTTOCKS_EXPOSED", 0.5),
    _rule(_R, "explicit", 0.3, 0.6),
    _rule(_R, "questionable", 0.6),
    _rule(_T, "guro", 0.35, 0.6),
    _rule(_T, "blood", 0.6),
    _rule(_T, "injury", 0.6),
    _rule(_T, "corpse", 0.5),
    _rule(_T, "death", 0.5),
    _rule(_T, "violence", 0.5),
)


@dataclass(frozen=True)
class Finding:
    """One watched signal that was present, whether or not it crossed a threshold."""

    source: SignalSource
    label: str
    score: float
    decision: Decision


@dataclass(frozen=True)
class ModerationVerdict:
    decision: Decision
    findings: tuple[Finding, ...]  # strictest first, then by score

    @property
    def reasons(self) -> tuple[Finding, ...]:
        """The findings that made the verdict stricter than allow."""
        return tuple(f for f in self.findings if f.decision > Decision.ALLOW)


class ModerationPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[ModerationRule, ...] = DEFAULT_RULES
    # Model scores are never exactly zero; signals below this are left out of the findings.
    report_at: float = Field(0.1, ge=0.0, le=1.0)

    @property
    def watched_tags(self) -> tuple[str, ...]:
        return tuple(rule.label for rule in self.rules if rule.source == SignalSource.TAG)

    def evaluate(
        self,
        detections: Sequence[Detection],
        ratings: Mapping[str, float] | None = None,
        tag_scores: Mapping[str, float] | None = None,
    ) -> ModerationVerdict:
        signals = {
            SignalSource.DETECTOR: _best_detection_scores(detections),
            SignalSource.RATING: _by_key(ratings or {}),
            SignalSource.TAG: _by_key(tag_scores or {}),
        }
        findings = []
        for rule in self.rules:
            key = rule.label if rule.source == SignalSource.DETECTOR else tag_key(rule.label)
            score = signals[rule.source].get(key)
            # A present signal is reported even when it allows, so a verdict shows what it weighed.
            if score is not None and score >= self.report_at:
                findings.append(Finding(rule.source, rule.label, score, rule.decide(score)))
        findings.sort(key=lambda f: (-f.decision, -f.score))
        decision = max((f.decision for f in findings), default=Decision.ALLOW)
        return ModerationVerdict(decision, tuple(findings))


def _best_detection_scores(detections: Iterable[Detection]) -> dict[str, float]:
    best: dict[str, float] = {}
    for detection in detections:
        best[detection.label] = max(best.get(detection.label, 0.0), detection.score)
    return best


def _by_key(scores: Mapping[str, float]) -> dict[str, float]:
    return {tag_key(name): score for name, score in scores.items()}
