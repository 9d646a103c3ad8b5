"""Checks of request fields shared by several handlers; each raises INVALID_ARGUMENT or NOT_FOUND."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Row

from kiln.v1 import dataset_pb2 as pb
from services.common.errors import (
    FieldViolation,
    ServiceError,
    invalid,
    invalid_field,
    not_found,
)
from services.dataset import names
from services.dataset.convert import (
    CROP_SIZES,
    FAMILY_TO_DB,
    ROLE_TO_DB,
)

MAX_REPEAT = 1000
# The documented contract of Dataset.default_repeat.
MAX_DEFAULT_REPEAT = 100
MAX_BATCH = 1000
MAX_MASK_PATHS = 100


def mask_paths(paths: Sequence[str], allowed: set[str]) -> set[str]:
    if not paths:
        raise invalid_field("update_mask", f"list the fields to change: {', '.join(sorted(allowed))}",
                            "UPDATE_MASK_REQUIRED")
    if len(paths) > MAX_MASK_PATHS:
        raise invalid_field("update_mask", f"at most {MAX_MASK_PATHS} paths; updatable: {', '.join(sorted(allowed))}",
                            "TOO_MANY_PATHS")
    unknown = [p for p in paths if p not in allowed]
    if unknown:
        raise invalid([FieldViolation("update_mask", f"{p!r} cannot be updated; updatable: "
                                                     f"{', '.join(sorted(allowed))}", "FIELD_NOT_UPDATABLE")
                       for p in unknown], reason="FIELD_NOT_UPDATABLE")
    return set(paths)


def role_of(value: pb.ImageRole.ValueType, field: str) -> str:
    role = ROLE_TO_DB.get(value)
    if role is None:
        raise invalid_field(field, "IMAGE_ROLE_TRAINING or IMAGE_ROLE_REGULARIZATION")
    return role


def optional_role(value: pb.ImageRole.ValueType, field: str) -> str | None:
    """A role filter: unspecified means both roles."""
    return role_of(value, field) if value else None


def text_problem(value: str, max_chars: int) -> str | None:
    """Why free text (line breaks allowed) cannot be stored, or None.

    PostgreSQL text cannot hold NUL while SQLite can: refusing it here keeps
    both databases answering the same, with INVALID_ARGUMENT rather than INTERNAL."""
    if len(value) > max_chars:
        return f"at most {max_chars} characters"
    if "\x00" in value:
        return "contains a NUL character"
    return None


def check_repeat(value: int, field: str) -> None:
    if not 0 <= value <= MAX_REPEAT:
        raise invalid_field(field, f"0 (use the dataset default) to {MAX_REPEAT}", "OUT_OF_RANGE")


def check_target_size(family: str, width: int, height: int, prefix: str) -> None:
    family_enum = {v: k for k, v in FAMILY_TO_DB.items()}[family]
    sizes = CROP_SIZES[family_enum]
    if (width, height) not in sizes:
        allowed = ", ".join(f"{w}x{h}" for w, h in sizes)
        field = f"{prefix}." if prefix else ""
        problem = f"{width}x{height} is not a {family} crop size; use {allowed}"
        raise invalid([FieldViolation(f"{field}target_width", problem, "UNSUPPORTED_CROP_SIZE"),
                       FieldViolation(f"{field}target_height", problem, "UNSUPPORTED_CROP_SIZE")],
                      reason="UNSUPPORTED_CROP_SIZE")


def child_ids(image_names: Sequence[str], dataset_id: str, required: bool) -> list[str]:
    if required and not image_names:
        raise invalid_field("names", "list at least one image")
    if len(image_names) > MAX_BATCH:
        raise invalid_field("names", f"at most {MAX_BATCH} images per call")
    ids: list[str] = []
    violations = []
    for index, value in enumerate(image_names):
        try:
            parsed_name = names.parse_image(value, f"names[{index}]")
        except ServiceError as err:
            violations.extend(err.violations)
            continue
        if parsed_name.dataset_id != dataset_id:
            violations.append(FieldViolation(f"names[{index}]", "belongs to another dataset than parent",
                                             "OTHER_DATASET"))
            continue
        ids.append(parsed_name.image_id)
    if violations:
        raise invalid(violations)
    return list(dict.fromkeys(ids))


def require_all(rows: Sequence[Row[Any]], image_ids: Sequence[str], dataset_id: str) -> None:
    found = {r.id for r in rows}
    missing = [i for i in image_ids if i not in found]
    if missing:
        raise not_found(f"datasets/{dataset_id}/images/{missing[0]}", f"image (and {len(missing) - 1} more)"
                        if len(missing) > 1 else "image")
