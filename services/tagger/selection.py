"""From scores to an ordered tag list: thresholds, MCut, rating, filters and ordering.

Thresholds are strict (`score > threshold`) and compared in float64, as in SmilingWolf's
wd-tagger space, so a tag list matches what users see there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.tagger.labels import LabelTable
from services.tagger.options import TaggingOptions
from services.tagger.tags import Tag, TagCategory, display_name, tag_key

# The reference never lets MCut drop the character threshold below this: character tags are
# few and a small gap between two low scores would otherwise admit unrelated characters.
CHARACTER_MCUT_FLOOR = 0.15


def mcut_threshold(scores: np.ndarray) -> float | None:
    """Maximum Cut (Largeron, Moulin & Géry, 2012): the midpoint of the widest gap between
    consecutive scores sorted high to low. None when fewer than two scores exist."""
    if scores.size < 2:
        return None
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    widest = int(np.argmax(ordered[:-1] - ordered[1:]))
    return float((ordered[widest] + ordered[widest + 1]) / 2)


def select_wd_tags(scores: np.ndarray, labels: LabelTable, options: TaggingOptions) -> list[Tag]:
    """Turn one image's model outputs (probabilities, one per label) into its tag list."""
    scores = np.asarray(scores, dtype=np.float64)
    general_threshold = options.general_threshold
    if options.general_mcut:
        general_threshold = _or_default(mcut_threshold(scores[labels.general]), general_threshold)
    character_threshold = options.character_threshold
    if options.character_mcut:
        cut = mcut_threshold(scores[labels.character])
        if cut is not None:
            character_threshold = max(CHARACTER_MCUT_FLOOR, cut)

    thresholds = np.full(len(labels), np.inf)
    thresholds[labels.general] = general_threshold
    thresholds[labels.character] = character_threshold
    kept = np.flatnonzero(scores > thresholds)  # model order, so "unsorted" means the CSV's order
    candidates = [
        Tag(
            display_name(labels.names[i], replace_underscores=options.replace_underscores),
            float(scores[i]),
            TagCategory(int(labels.categories[i])),
        )
        for i in kept
    ]
    rating = None
    if labels.rating.size:
        best = int(labels.rating[np.argmax(scores[labels.rating])])
        rating = Tag(
            display_name(labels.names[best], replace_underscores=options.replace_underscores),
            float(scores[best]),
            TagCategory.RATING,
        )
    return arrange_tags(candidates, rating, options)


def arrange_tags(candidates: Sequence[Tag], rating: Tag | None, options: TaggingOptions) -> list[Tag]:
    """Apply the options that every tagger shares to tags that already passed their thresholds.

    `candidates` are general and character tags in the tagger's natural order. Undesired tags
    go first, then `max_tags` keeps the highest scores, then ordering; the rating (when wanted)
    leads and does not count towards `max_tags`.
    """
    undesired = {tag_key(name) for name in options.undesired_tags}
    kept = [tag for tag in candidates if tag_key(tag.name) not in undesired]
    if options.max_tags is not None and len(kept) > options.max_tags:
        best = sorted(range(len(kept)), key=lambda i: -kept[i].score)[: options.max_tags]
        kept = [kept[i] for i in sorted(best)]
    if options.sort_by_confidence:
        kept = sorted(kept, key=lambda tag: -tag.score)  # stable: ties keep the natural order
    if options.character_first:
        kept = [t for t in kept if t.category == TagCategory.CHARACTER] + [
            t for t in kept if t.category != TagCategory.CHARACTER
        ]
    if options.include_rating and rating is not None and tag_key(rating.name) not in undesired:
        return [rating, *kept]
    return kept


def _or_default(value: float | None, default: float) -> float:
    return default if value is None else value
