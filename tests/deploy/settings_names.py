"""Every environment variable a Kiln process reads, derived from its pydantic settings class (the
prefix, the field names, and nested models reached through the nested delimiter), and which class
each command of the images reads."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_settings import BaseSettings

from services.dataset.settings import DatasetSettings
from services.gateway.settings import GatewaySettings
from services.tagger.settings import TaggerSettings
from services.trainer.service_settings import TrainerServiceSettings
from services.trainer.worker.settings import WorkerSettings

# `python -m MODULE ...` -> the settings it reads (a `migrate` subcommand reads its service's).
SETTINGS_OF_MODULE: dict[str, type[BaseSettings]] = {
    "services.dataset": DatasetSettings,
    "services.gateway": GatewaySettings,
    "services.tagger": TaggerSettings,
    "services.trainer": TrainerServiceSettings,
    "services.trainer.worker": WorkerSettings,
}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]
    return []


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Upper-case names, e.g. KILN_S3__ENDPOINT, KILN_S3 (the whole model as JSON), KILN_LOG_LEVEL."""
    prefix = settings.model_config.get("env_prefix", "")
    delimiter = settings.model_config.get("env_nested_delimiter")
    names: set[str] = set()

    def walk(model: type[BaseModel], path: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{path}{name}".upper()
            names.add(key)
            for nested in _models_in(field.annotation) if delimiter else []:
                walk(nested, key + delimiter)

    walk(settings, prefix)
    return names


def module_of(command: list[str]) -> str:
    """The module of `python -m MODULE [ARGS]`."""
    if command[:2] != ["python", "-m"] or len(command) < 3:
        raise AssertionError(f"{command}: Kiln commands are `python -m services.<name> ...`")
    return command[2]


def settings_of(command: list[str]) -> type[BaseSettings]:
    module = module_of(command)
    if module not in SETTINGS_OF_MODULE:
        raise AssertionError(f"{command}: no Kiln service is `python -m {module}`")
    return SETTINGS_OF_MODULE[module]
