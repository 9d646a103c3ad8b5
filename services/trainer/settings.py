"""Trainer settings from the environment (`KILN_…`), read once at the edge (the engine CLI, the
demo, the engine benchmark) and passed down: `KILN_MODELS_DIR=/srv/kiln/models`."""

from __future__ import annotations

import pathlib

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def user_cache_models() -> pathlib.Path:
    return pathlib.Path.home() / ".cache" / "kiln" / "models"


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    models_dir: pathlib.Path = Field(
        default_factory=user_cache_models,
        description="base-model store: imported weights, and the built-in tiny models built on first use",
    )
