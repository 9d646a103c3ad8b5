"""Captions as ordered lists of tags, written as comma-separated tags.

A tag is one comma-separated chunk, so it can never contain a comma itself.
Tags are compared after trimming and collapsing whitespace; a caption never
holds the same tag twice.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from services.common.errors import FieldViolation, invalid, invalid_field

MAX_TAG_LENGTH = 128
MAX_TAGS = 200
MAX_CAPTION_LENGTH = 4000
_SPACES = re.compile(r"\s+")


def clean_tag(raw: str) -> str:
    return _SPACES.sub(" ", raw).strip()


def tag_problem(tag: str) -> str | None:
    if not tag:
        return "empty tag"
    if "," in tag:
        return "a tag cannot contain a comma (each comma-separated chunk is its own tag)"
    if len(tag) > MAX_TAG_LENGTH:
        return f"longer than {MAX_TAG_LENGTH} characters"
    if not tag.isprintable():
        return "contains control characters"
    return None


def validate_tags(raw_tags: Sequence[str], field: str, allow_duplicates: bool = False,
                  what: str = "caption") -> list[str]:
    """Cleaned tags, or INVALID_ARGUMENT naming every bad one; `what` the list is called in messages."""
    if len(raw_tags) > MAX_TAGS:
        # Before looking at any tag: a request may carry millions, and this runs on the event loop.
        raise invalid_field(field, f"at most {MAX_TAGS} tags per {what}; got {len(raw_tags)}", "TOO_MANY_TAGS")
    violations: list[FieldViolation] = []
    cleaned: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_tags):
        tag = clean_tag(raw)
        problem = tag_problem(tag)
        if problem is None and tag in seen and not allow_duplicates:
            problem = f"duplicate tag {tag!r}"
        if problem:
            violations.append(FieldViolation(f"{field}[{index}]", problem, "INVALID_TAG"))
            continue
        seen.add(tag)
        cleaned.append(tag)
    if len(", ".join(cleaned)) > MAX_CAPTION_LENGTH:
        violations.append(FieldViolation(field, f"{what} longer than {MAX_CAPTION_LENGTH} characters",
                                         "CAPTION_TOO_LONG"))
    if violations:
        raise invalid(violations)
    return cleaned


def check_caption_size(tags: Sequence[str], field: str) -> None:
    if len(tags) > MAX_TAGS or len(", ".join(tags)) > MAX_CAPTION_LENGTH:
        raise invalid([FieldViolation(field, f"the caption would exceed {MAX_TAGS} tags or "
                                             f"{MAX_CAPTION_LENGTH} characters", "CAPTION_TOO_LONG")])


def add_tags(tags: Sequence[str], new: Sequence[str], at_head: bool) -> list[str]:
    """Add without duplicates. At the head (where trigger words go) the new tags
    come first in their given order, moving any existing copy; at the tail only
    missing tags are appended."""
    wanted = list(dict.fromkeys(new))
    if at_head:
        return [*wanted, *(t for t in tags if t not in wanted)]
    return [*tags, *(t for t in wanted if t not in tags)]


def remove_tags(tags: Sequence[str], unwanted: Iterable[str]) -> list[str]:
    drop = set(unwanted)
    return [t for t in tags if t not in drop]


def replace_tag(tags: Sequence[str], old: str, new: str) -> list[str]:
    if old not in tags:
        return list(tags)
    if new in tags:
        return [t for t in tags if t != old]
    return [new if t == old else t for t in tags]


def caption_text(tags: Sequence[str]) -> str:
    return ", ".join(tags)


def tag_frequencies(captions: Iterable[Sequence[str]]) -> list[tuple[str, int]]:
    counts = Counter(tag for tags in captions for tag in tags)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
