"""Tags as the rest of Kiln sees them, and the naming rules shared by every tagger."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class TagCategory(IntEnum):
    """Category numbers of WD14's `selected_tags.csv` (Danbooru's own category ids)."""

    GENERAL = 0
    CHARACTER = 4
    RATING = 9


# Kaomoji keep their underscores: replacing them would turn `^_^` into `^ ^`, a different tag.
# The list is the one every WD14 tool uses (toriato's webui extension, SmilingWolf's space).
KAOMOJIS: frozenset[str] = frozenset(
    {
        "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
        "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Tag:
    name: str
    score: float
    category: TagCategory


def display_name(raw_name: str, *, replace_underscores: bool = True) -> str:
    """The caption form of a tag: `long_hair` -> `long hair`, kaomoji untouched, never escaped."""
    if not replace_underscores or raw_name in KAOMOJIS:
        return raw_name
    return raw_name.replace("_", " ")


def tag_key(name: str) -> str:
    """Comparison key so that `Long_Hair`, `long hair` and `long_hair ` name the same tag."""
    name = name.strip().lower()
    return name if name in KAOMOJIS else name.replace("_", " ")
