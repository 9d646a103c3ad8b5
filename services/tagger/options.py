"""Per-request tagging options; the defaults are the field's (SmilingWolf's wd-tagger space)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TaggingOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    general_threshold: float = Field(0.35, ge=0.0, le=1.0, description="keep general tags scoring above this")
    character_threshold: float = Field(0.85, ge=0.0, le=1.0, description="keep character tags above this")
    general_mcut: bool = Field(False, description="replace the general threshold by the MCut threshold")
    character_mcut: bool = Field(
        False, description="replace the character threshold by the MCut threshold (never below 0.15)"
    )
    max_tags: int | None = Field(
        None, ge=1, description="keep at most this many general+character tags, the highest scoring"
    )
    sort_by_confidence: bool = Field(True, description="highest score first; otherwise the tag list's order")
    character_first: bool = Field(True, description="character tags before general tags")
    include_rating: bool = Field(True, description="put the most likely rating tag first")
    replace_underscores: bool = Field(True, description="`long_hair` -> `long hair`, kaomoji excepted")
    undesired_tags: tuple[str, ...] = Field(
        (), description="tags never returned; matched ignoring case and `_` vs space"
    )
