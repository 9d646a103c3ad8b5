"""Caption handling with kohya sd-scripts' semantics (``BaseDataset.process_caption``).

A "tag" (the seed's "token") is one comma-separated chunk. The first ``keep_tokens`` tags stay in
front; the rest are shuffled and dropped per tag; a whole caption can be dropped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SEPARATOR = ","


@dataclass(frozen=True)
class CaptionPolicy:
    shuffle: bool = False
    keep_tokens: int = 0
    dropout_rate: float = 0.0
    dropout_every_n_epochs: int = 0
    tag_dropout_rate: float = 0.0


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.strip().split(SEPARATOR)]


def count_tags(caption: str) -> int:
    return len([tag for tag in split_tags(caption) if tag])


def process_caption(caption: str, policy: CaptionPolicy, rng: random.Random, epoch: int) -> str:
    """The caption seen by the text encoder for one sample; ``epoch`` counts from 1 as in kohya."""
    # Draw the dropout coin first and always, like kohya, so that one option does not shift the
    # random stream that the others see.
    dropped = policy.dropout_rate > 0 and rng.random() < policy.dropout_rate
    dropped = dropped or (policy.dropout_every_n_epochs > 0 and epoch % policy.dropout_every_n_epochs == 0)
    if dropped:
        return ""
    if not (policy.shuffle or policy.tag_dropout_rate > 0):
        return caption
    tags = split_tags(caption)
    fixed, flexible = tags[: policy.keep_tokens], tags[policy.keep_tokens :]
    if policy.shuffle:
        rng.shuffle(flexible)
    if policy.tag_dropout_rate > 0:
        flexible = [tag for tag in flexible if rng.random() >= policy.tag_dropout_rate]
    return ", ".join(fixed + flexible)
