"""Caption shuffling, keep-N and dropout with kohya's semantics (a tag is one comma-separated chunk)."""

from __future__ import annotations

import random

from services.trainer.engine.captions import CaptionPolicy, count_tags, process_caption

CAPTION = "mytrigger, black cat, eating, sitting, indoors, night"


def test_keep_n_holds_the_trigger_first_while_the_rest_shuffles() -> None:
    rng = random.Random(0)
    policy = CaptionPolicy(shuffle=True, keep_tokens=1)
    seen = {process_caption(CAPTION, policy, rng, epoch=1) for _ in range(50)}
    assert len(seen) > 10  # it does shuffle
    for caption in seen:
        tags = caption.split(", ")
        assert tags[0] == "mytrigger"
        assert sorted(tags) == sorted(CAPTION.split(", "))


def test_without_keep_n_the_trigger_moves() -> None:
    rng = random.Random(0)
    firsts = {process_caption(CAPTION, CaptionPolicy(shuffle=True), rng, 1).split(", ")[0] for _ in range(50)}
    assert len(firsts) > 1


def test_keep_two_counts_comma_chunks_not_words() -> None:
    rng = random.Random(1)
    for _ in range(20):
        tags = process_caption(CAPTION, CaptionPolicy(shuffle=True, keep_tokens=2), rng, 1).split(", ")
        assert tags[:2] == ["mytrigger", "black cat"]
    assert count_tags("black cat, eating, sitting") == 3


def test_no_shuffle_leaves_the_caption_alone() -> None:
    assert process_caption(CAPTION, CaptionPolicy(keep_tokens=1), random.Random(0), 1) == CAPTION


def test_caption_dropout_rate_and_every_n_epochs() -> None:
    rng = random.Random(0)
    results = [process_caption(CAPTION, CaptionPolicy(dropout_rate=0.5), rng, 1) for _ in range(400)]
    dropped = results.count("")
    assert 150 < dropped < 250 and set(results) == {"", CAPTION}
    every_two = CaptionPolicy(dropout_every_n_epochs=2)
    assert process_caption(CAPTION, every_two, rng, epoch=2) == ""
    assert process_caption(CAPTION, every_two, rng, epoch=3) == CAPTION


def test_tag_dropout_never_drops_kept_tags() -> None:
    rng = random.Random(0)
    policy = CaptionPolicy(keep_tokens=1, tag_dropout_rate=0.5)
    lengths = set()
    for _ in range(100):
        tags = process_caption(CAPTION, policy, rng, 1).split(", ")
        assert tags[0] == "mytrigger"
        lengths.add(len(tags))
    assert min(lengths) < 6
