"""A KILN_ setting whose value can't be used, told to the operator in one line naming the
variable to fix, instead of pydantic's traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import SettingsError

T = TypeVar("T")


class BadSettings(Exception):
    """The settings can't be loaded; the message names each variable and what is wrong with it."""


def variable_name(location: tuple[int | str, ...], prefix: str = "KILN_", delimiter: str = "__") -> str:
    """The environment variable a setting is read from: ("s3", "bucket") is KILN_S3__BUCKET."""
    return prefix + delimiter.join(str(part) for part in location).upper()


def describe(error: ValidationError) -> str:
    # The values themselves are left out: they may be passwords or URLs holding one.
    return "; ".join(f"{variable_name(problem['loc'])}: {problem['msg']}"
                     for problem in error.errors(include_url=False))


def load_settings(factory: Callable[[], T]) -> T:
    """The settings `factory` reads from the environment; BadSettings when a value can't be used."""
    try:
        return factory()
    except ValidationError as error:
        raise BadSettings(f"bad setting {describe(error)}: correct the value, or unset the variable for its "
                          "default") from error
    except SettingsError as error:
        raise BadSettings(f"bad setting: {error}: correct the variable's value (JSON for a list or object)") \
            from error
