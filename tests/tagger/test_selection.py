"""Thresholds, MCut, rating, ordering and naming, against hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest

from services.tagger.errors import InvalidTaggerFiles
from services.tagger.labels import LabelTable
from services.tagger.options import TaggingOptions
from services.tagger.selection import mcut_threshold, select_wd_tags
from services.tagger.tags import TagCategory
from tests.tagger.helpers import WD_TAGS

LABELS = LabelTable.from_text(
    "tag_id,name,category,count\n" + "".join(f"{i},{n},{c},1\n" for i, (n, c) in enumerate(WD_TAGS))
)

#                 general sensitive quest. explicit 1girl long_hair ^_^   o_o  blue_sky guro  miku  rin
SCORES = np.array([0.10, 0.60, 0.20, 0.05, 0.95, 0.35, 0.351, 0.50, 0.20, 0.36, 0.86, 0.85])


def names(options: TaggingOptions, scores: np.ndarray = SCORES) -> list[str]:
    return [tag.name for tag in select_wd_tags(scores, LABELS, options)]


def test_defaults_are_the_fields_and_ordering_is_rating_characters_then_confidence() -> None:
    options = TaggingOptions()
    assert (options.general_threshold, options.character_threshold) == (0.35, 0.85)
    # long_hair at exactly 0.35 and kagamine_rin at exactly 0.85 stay out: thresholds are strict.
    assert names(options) == ["sensitive", "hatsune miku", "1girl", "o_o", "guro", "^_^"]


def test_every_tag_carries_score_and_category() -> None:
    tags = select_wd_tags(SCORES, LABELS, TaggingOptions())
    assert [(t.score, t.category) for t in tags[:3]] == [
        (0.60, TagCategory.RATING),
        (0.86, TagCategory.CHARACTER),
        (0.95, TagCategory.GENERAL),
    ]


def test_model_order_when_not_sorted() -> None:
    assert names(TaggingOptions(sort_by_confidence=False)) == [
        "sensitive",
        "hatsune miku",
        "1girl",
        "^_^",
        "o_o",
        "guro",
    ]


def test_characters_mixed_in_when_not_first() -> None:
    assert names(TaggingOptions(character_first=False)) == ["sensitive", "1girl", "hatsune miku", "o_o", "guro", "^_^"]
    assert names(TaggingOptions(character_first=False, sort_by_confidence=False)) == [
        "sensitive", "1girl", "^_^", "o_o", "guro", "hatsune miku",
    ]  # fmt: skip


def test_thresholds_are_per_category() -> None:
    options = TaggingOptions(general_threshold=0.5, character_threshold=0.8, include_rating=False)
    assert names(options) == ["hatsune miku", "kagamine rin", "1girl"]


def test_underscores_become_spaces_except_in_kaomoji() -> None:
    scores = SCORES.copy()
    scores[[5, 8]] = 0.9  # long_hair, blue_sky
    assert set(names(TaggingOptions(), scores)) >= {"long hair", "blue sky", "^_^", "o_o"}
    assert set(names(TaggingOptions(replace_underscores=False), scores)) >= {"long_hair", "blue_sky", "hatsune_miku"}


def test_no_parenthesis_escaping() -> None:
    labels = LabelTable.from_text("tag_id,name,category,count\n1,general,9,1\n2,ganyu_(genshin_impact),4,1\n3,:),0,1\n")
    tags = select_wd_tags(np.array([0.9, 0.9, 0.9]), labels, TaggingOptions())
    assert [t.name for t in tags] == ["general", "ganyu (genshin impact)", ":)"]


def test_rating_is_the_most_likely_one_and_can_be_left_out() -> None:
    scores = SCORES.copy()
    scores[:4] = [0.1, 0.2, 0.3, 0.7]
    assert names(TaggingOptions(), scores)[0] == "explicit"
    assert "explicit" not in names(TaggingOptions(include_rating=False), scores)


def test_undesired_tags_match_any_spelling() -> None:
    options = TaggingOptions(undesired_tags=("O_O", "hatsune miku", " Sensitive ", "GURO"))
    assert names(options) == ["1girl", "^_^"]


def test_max_tags_keeps_the_highest_scores_then_orders_them() -> None:
    # Highest two of the kept tags are 1girl (0.95) and hatsune_miku (0.86); the rating is extra.
    assert names(TaggingOptions(max_tags=2, sort_by_confidence=False)) == ["sensitive", "hatsune miku", "1girl"]
    assert names(TaggingOptions(max_tags=3, character_first=False)) == ["sensitive", "1girl", "hatsune miku", "o_o"]


def test_mcut_threshold_is_the_midpoint_of_the_widest_gap() -> None:
    # sorted 0.9 0.8 0.45 0.4 0.1 -> gaps 0.1 0.35 0.05 0.3 -> widest between 0.8 and 0.45
    assert mcut_threshold(np.array([0.4, 0.9, 0.1, 0.8, 0.45])) == pytest.approx(0.625)
    assert mcut_threshold(np.array([0.5])) is None


def test_general_mcut_replaces_the_general_threshold() -> None:
    # general scores 0.95 .35 .351 .5 .2 .36 -> widest gap 0.95-0.5 -> cut 0.725
    assert names(TaggingOptions(general_mcut=True)) == ["sensitive", "hatsune miku", "1girl"]


def test_character_mcut_has_a_floor_of_0_15() -> None:
    scores = SCORES.copy()
    scores[10:] = [0.30, 0.05]  # gap 0.25 -> cut 0.175: miku in
    assert "hatsune miku" in names(TaggingOptions(character_mcut=True), scores)
    assert "hatsune miku" not in names(TaggingOptions(), scores)
    scores[10:] = [0.12, 0.02]  # cut 0.07, floored to 0.15: miku out
    assert "hatsune miku" not in names(TaggingOptions(character_mcut=True), scores)


def test_other_categories_are_never_returned() -> None:
    labels = LabelTable.from_text("tag_id,name,category,count\n1,general,9,1\n2,vocaloid,3,1\n3,smile,0,1\n")
    assert [t.name for t in select_wd_tags(np.array([0.9, 1.0, 0.9]), labels, TaggingOptions())] == ["general", "smile"]


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("tag_id,label,count\n1,smile,1\n", "lacks the column(s) name, category"),
        ("tag_id,name,category,count\n", "no tags"),
        ("tag_id,name,category,count\n1,smile,general,1\n", "line 2: category 'general' is not an integer"),
        ("tag_id,name,category,count\n1,,0,1\n", "line 2: empty tag name"),
        ("tag_id,name,category,count\n1,general,9,1\n", "no general tags"),
    ],
)
def test_bad_tag_lists_are_refused_with_the_reason(csv_text: str, message: str) -> None:
    with pytest.raises(InvalidTaggerFiles, match=message.replace("(", r"\(").replace(")", r"\)")):
        LabelTable.from_text(csv_text)
