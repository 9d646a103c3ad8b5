"""The tag list of a WD14 model: `selected_tags.csv` with columns `tag_id,name,category,count`."""

from __future__ import annotations

import csv
import pathlib
from dataclasses import dataclass, field

import numpy as np

from services.tagger.errors import InvalidTaggerFiles
from services.tagger.tags import TagCategory, tag_key

REQUIRED_COLUMNS = ("name", "category")


@dataclass(frozen=True)
class LabelTable:
    """Row i names output i of the model. Categories other than rating/character/general are
    kept (so row numbers stay aligned with outputs) but never returned, as in the reference."""

    names: tuple[str, ...]
    categories: np.ndarray
    general: np.ndarray = field(init=False)
    character: np.ndarray = field(init=False)
    rating: np.ndarray = field(init=False)
    _index_by_key: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # First occurrence wins: a duplicated name must not shadow the row the model trained on.
        index: dict[str, int] = {}
        for i, name in enumerate(self.names):
            index.setdefault(tag_key(name), i)
        object.__setattr__(self, "_index_by_key", index)
        for attribute, category in (
            ("general", TagCategory.GENERAL),
            ("character", TagCategory.CHARACTER),
            ("rating", TagCategory.RATING),
        ):
            object.__setattr__(self, attribute, np.flatnonzero(self.categories == category))

    def __len__(self) -> int:
        return len(self.names)

    def index_of(self, name: str) -> int | None:
        """Row of a tag given in any spelling (`long_hair`, `Long Hair`)."""
        return self._index_by_key.get(tag_key(name))

    @classmethod
    def from_csv(cls, path: pathlib.Path) -> LabelTable:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise InvalidTaggerFiles(f"tag list {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidTaggerFiles(f"tag list {path} cannot be read as UTF-8 text: {error}") from None
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_text(cls, text: str, *, source: str = "selected_tags.csv") -> LabelTable:
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidTaggerFiles(
                f"{source} lacks the column(s) {', '.join(missing)}; a WD14 tag list starts with the "
                "header `tag_id,name,category,count` — use the selected_tags.csv published with the model"
            )
        names: list[str] = []
        categories: list[int] = []
        for line_number, row in enumerate(reader, start=2):
            name = (row.get("name") or "").strip()
            if not name:
                raise InvalidTaggerFiles(f"{source} line {line_number}: empty tag name")
            try:
                categories.append(int(row.get("category") or ""))
            except ValueError:
                raise InvalidTaggerFiles(
                    f"{source} line {line_number}: category {row.get('category')!r} is not an integer "
                    "(9 rating, 4 character, 0 general)"
                ) from None
            names.append(name)
        if not names:
            raise InvalidTaggerFiles(f"{source} has a header but no tags")
        table = cls(names=tuple(names), categories=np.asarray(categories, dtype=np.int64))
        if table.general.size == 0:
            raise InvalidTaggerFiles(f"{source} has no general tags (category 0): this is not a WD14 tag list")
        return table
