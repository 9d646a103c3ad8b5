"""Screening verdicts: detector classes, WD ratings and tags against a configurable policy."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from services.common.body_detector import BodyDetector, Detection
from services.tagger.builtin_tagger import BuiltinTagger
from services.tagger.engine import TaggingEngine
from services.tagger.moderation import Decision, ModerationPolicy, ModerationRule, SignalSource
from services.tagger.options import TaggingOptions
from services.tagger.settings import TaggerSettings
from services.tagger.wd_tagger import WdTagger
from tests.tagger.helpers import solid_png


def seen(label: str, score: float) -> Detection:
    return Detection(label, score, (0.0, 0.0, 10.0, 10.0))


POLICY = ModerationPolicy()


@pytest.mark.parametrize(
    ("detections", "decision"),
    [
        ([], Decision.ALLOW),
        ([seen("BUTTOCKS_EXPOSED", 0.32)], Decision.ALLOW),  # the coffee cup
        ([seen("BUTTOCKS_EXPOSED", 0.5)], Decision.REVIEW),
        ([seen("FEMALE_BREAST_EXPOSED", 0.95)], Decision.REVIEW),  # nudity goes to a human, never auto-blocked
        ([seen("MALE_GENITALIA_EXPOSED", 0.6)], Decision.REVIEW),
        ([seen("MALE_GENITALIA_EXPOSED", 0.75)], Decision.BLOCK),
        ([seen("MALE_BREAST_EXPOSED", 0.99), seen("FEET_EXPOSED", 0.99)], Decision.ALLOW),
        ([seen("FACE_FEMALE", 0.9), seen("ANUS_EXPOSED", 0.8), seen("BUTTOCKS_EXPOSED", 0.6)], Decision.BLOCK),
    ],
)
def test_default_policy_on_detections(detections: list[Detection], decision: Decision) -> None:
    assert POLICY.evaluate(detections).decision == decision


def test_findings_explain_the_verdict_strictest_first() -> None:
    verdict = POLICY.evaluate(
        [
            seen("BUTTOCKS_EXPOSED", 0.6),
            seen("BUTTOCKS_EXPOSED", 0.3),
            seen("ANUS_EXPOSED", 0.8),
            seen("FACE_MALE", 0.9),
        ],
        ratings={"general": 0.05, "explicit": 0.31},
        tag_scores={"guro": 0.2, "blood": 0.05},
    )
    assert [(f.source, f.label, f.score, f.decision) for f in verdict.findings] == [
        (SignalSource.DETECTOR, "ANUS_EXPOSED", 0.8, Decision.BLOCK),
        (SignalSource.DETECTOR, "BUTTOCKS_EXPOSED", 0.6, Decision.REVIEW),  # the best of two boxes
        (SignalSource.RATING, "explicit", 0.31, Decision.REVIEW),
        (SignalSource.TAG, "guro", 0.2, Decision.ALLOW),  # present, weighed, allowed; blood 0.05 not reported
    ]
    assert [f.label for f in verdict.reasons] == ["ANUS_EXPOSED", "BUTTOCKS_EXPOSED", "explicit"]


@pytest.mark.parametrize(
    ("ratings", "tags", "decision"),
    [
        ({"general": 0.9, "explicit": 0.1}, {}, Decision.ALLOW),
        ({"explicit": 0.35}, {}, Decision.REVIEW),
        ({"explicit": 0.65}, {}, Decision.BLOCK),
        ({"questionable": 0.7}, {}, Decision.REVIEW),
        ({}, {"guro": 0.61}, Decision.BLOCK),
        ({}, {"blood": 0.7}, Decision.REVIEW),
        ({}, {"injury": 0.59}, Decision.ALLOW),
    ],
)
def test_default_policy_on_wd_signals(ratings: dict, tags: dict, decision: Decision) -> None:
    assert POLICY.evaluate([], ratings, tags).decision == decision


def test_policy_is_configurable_and_validated(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    strict = ModerationPolicy(rules=(ModerationRule(source="detector", label="FEET_EXPOSED", block_at=0.4),))
    assert strict.evaluate([seen("FEET_EXPOSED", 0.45)]).decision == Decision.BLOCK
    assert strict.evaluate([seen("ANUS_EXPOSED", 0.99)]).decision == Decision.ALLOW  # only its own rules
    with pytest.raises(ValidationError, match=r"block_at 0\.3 is below review_at 0\.5"):
        ModerationRule(source="tag", label="blood", review_at=0.5, block_at=0.3)
    with pytest.raises(ValidationError, match="sets neither"):
        ModerationRule(source="tag", label="blood")
    with pytest.raises(ValidationError, match="not a detector class"):
        ModerationRule(source="detector", label="NAKED", review_at=0.5)
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(strict.model_dump_json())
    monkeypatch.setenv("KILN_TAGGER_POLICY_FILE", str(policy_file))
    assert TaggerSettings().moderation_policy() == strict


def test_coffee_cup_is_allowed_but_its_signal_is_shown(detector: BodyDetector, samples: pathlib.Path) -> None:
    engine = TaggingEngine(BuiltinTagger(), detector=detector)
    (result,) = engine.tag([(samples / "coffee.png").read_bytes()])
    assert result.verdict is not None and result.verdict.decision == Decision.ALLOW
    assert [(f.label, round(f.score, 2)) for f in result.verdict.findings] == [("BUTTOCKS_EXPOSED", 0.32)]


def test_wd_rating_and_tags_drive_the_verdict_whatever_the_options(
    make_wd_model: Callable[..., pathlib.Path], detector: BodyDetector
) -> None:
    #                  general sens. quest. expl. 1girl long ^_^ o_o sky  guro miku rin
    explicit_gore = [0.05, 0.1, 0.2, 0.8, 0.9, 0.1, 0.1, 0.1, 0.1, 0.7, 0.1, 0.1]
    engine = TaggingEngine(WdTagger("wd", make_wd_model(explicit_gore)), detector=detector)
    # A user who hides guro and the rating and raises the threshold still gets screened.
    options = TaggingOptions(undesired_tags=("guro",), include_rating=False, general_threshold=0.95)
    (result,) = engine.tag([solid_png((200, 180, 160))], options)
    assert result.tags == ()
    assert result.verdict is not None and result.verdict.decision == Decision.BLOCK
    assert {(f.source, f.label): round(f.score, 2) for f in result.verdict.reasons} == {
        (SignalSource.RATING, "explicit"): 0.8,
        (SignalSource.TAG, "guro"): 0.7,
    }


def test_screening_can_be_turned_off(make_wd_model: Callable[..., pathlib.Path], detector: BodyDetector) -> None:
    engine = TaggingEngine(WdTagger("wd", make_wd_model([0.5] * 12)), screen=False)
    assert engine.tag([solid_png((1, 2, 3))])[0].verdict is None
    screening = TaggingEngine(WdTagger("wd", make_wd_model([0.5] * 12)), detector=detector)
    assert screening.tag([solid_png((1, 2, 3))])[0].verdict is not None
    assert screening.tag([solid_png((1, 2, 3))], screen=False)[0].verdict is None  # per call
