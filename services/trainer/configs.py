"""A job's configuration: the request's preset, basic-mode and pro-mode fields merged into the
engine's configuration, and back into the API's message with every default resolved.

Precedence: the engine's defaults, then the preset's parameters, then the basic-mode fields,
then the pro-mode `config` fields. Each value remembers where it came from, so a violation the
engine finds names the request field the user set (`training_job.basic.epochs`), not the
engine's name for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from services.common.errors import FieldViolation
from services.trainer.engine import catalog
from services.trainer.engine.config import TrainingConfig

FAMILY_TO_PROTO: dict[str, dpb.ModelFamily.ValueType] = {"sd15": dpb.MODEL_FAMILY_SD15,
                                                         "sdxl": dpb.MODEL_FAMILY_SDXL}
BASE_MODEL_PREFIX = "baseModels/"
PRESET_PREFIX = "presets/"
_JOB = "training_job"


@dataclass
class MergedConfig:
    values: dict[str, Any]
    # engine field (top level, or "preview.<field>") -> request path that set it
    sources: dict[str, str] = field(default_factory=dict)

    def path_of(self, engine_field: str) -> str:
        """The request field behind an engine field named in a violation (`preview.steps`,
        `resolution`, `optimizer_args.betas`)."""
        if engine_field in self.sources:
            return self.sources[engine_field]
        top = engine_field.split(".", 1)[0]
        if top in self.sources and not engine_field.startswith("preview."):
            return self.sources[top]
        if engine_field == "dataset":
            return f"{_JOB}.snapshot"
        return f"{_JOB}.config.{engine_field}"


def base_model_id(name: str) -> str:
    return name.removeprefix(BASE_MODEL_PREFIX)


def preset_id(name: str) -> str:
    return name.removeprefix(PRESET_PREFIX)


def request_config_values(config: pb.TrainingConfig) -> dict[str, Any]:
    """The fields the client set, as the engine names and types them."""
    values: dict[str, Any] = {}
    for descriptor, value in config.ListFields():
        name = descriptor.name
        if name == "resolution":
            values[name] = value.width if value.width == value.height else [value.width, value.height]
        elif name == "optimizer_args":
            values[name] = json_format.MessageToDict(value)
        elif name == "preview":
            values[name] = {d.name: v for d, v in value.ListFields()}
        elif name == "base_model":
            values[name] = base_model_id(value)
        else:
            values[name] = value
    return values


def merge_request(job: pb.TrainingJob) -> tuple[MergedConfig, list[FieldViolation]]:
    """The engine configuration a create request asks for (types unchecked: the engine checks them)."""
    violations: list[FieldViolation] = []
    merged = MergedConfig({})
    config_values = request_config_values(job.config)
    if job.preset:
        chosen_id = preset_id(job.preset)
        if not job.preset.startswith(PRESET_PREFIX) or not _known_preset(chosen_id):
            violations.append(FieldViolation(f"{_JOB}.preset", f"unknown preset {job.preset!r}; ListPresets names "
                                             "the known ones (presets/{id})"))
        else:
            # Any model of the preset's family may train with its parameters (its own list is the
            # recommendation); the engine refuses one of another family.
            base = config_values.get("base_model")
            values = catalog.preset_config(chosen_id, base_model=base)
            merged.values.update(values)
            for key in values:
                merged.sources[key] = f"{_JOB}.preset"
            for key in values.get("preview", {}):
                merged.sources[f"preview.{key}"] = f"{_JOB}.preset"
    basic = job.basic
    if basic.HasField("repeat"):
        merged.values["repeat"] = basic.repeat
        merged.sources["repeat"] = f"{_JOB}.basic.repeat"
    if basic.HasField("epochs"):
        merged.values["epochs"] = basic.epochs
        merged.sources["epochs"] = f"{_JOB}.basic.epochs"
    if basic.HasField("preview_prompt"):
        merged.values.setdefault("preview", {})["prompt"] = basic.preview_prompt
        merged.sources["preview.prompt"] = f"{_JOB}.basic.preview_prompt"
    for key, value in config_values.items():
        if key == "preview":
            preview = merged.values.setdefault("preview", {})
            for sub, sub_value in value.items():
                preview[sub] = sub_value
                merged.sources[f"preview.{sub}"] = f"{_JOB}.config.preview.{sub}"
        else:
            merged.values[key] = value
            merged.sources[key] = f"{_JOB}.config.{key}"
    if "base_model" in config_values and not job.config.base_model.startswith(BASE_MODEL_PREFIX):
        violations.append(FieldViolation(f"{_JOB}.config.base_model", "a base model's name: baseModels/{id}"))
    return merged, violations


def _known_preset(preset: str) -> bool:
    return any(p.id == preset for p in catalog.PRESETS)


def config_message(config: TrainingConfig) -> pb.TrainingConfig:
    """The API's view of an engine configuration: every field set."""
    values = json.loads(config.model_dump_json())
    message = pb.TrainingConfig()
    for name, value in values.items():
        if value is None or name == "device":
            continue
        if name == "resolution":
            width, height = (value, value) if isinstance(value, int) else value
            message.resolution.CopyFrom(pb.Resolution(width=width, height=height))
        elif name == "optimizer_args":
            message.optimizer_args.update(value)
        elif name == "preview":
            for sub, sub_value in value.items():
                if sub_value is not None:
                    setattr(message.preview, sub, sub_value)
        elif name == "base_model":
            message.base_model = BASE_MODEL_PREFIX + value
        else:
            setattr(message, name, value)
    return message


def apply_overrides(original: pb.TrainingJob, overrides: pb.TrainingJob, paths: list[str]) -> pb.TrainingJob:
    """A retrain request: the original request with the masked fields of `overrides`. A path
    `config.<field>` (or `config.preview.<field>`) replaces that field, `config` all of it."""
    job = pb.TrainingJob()
    job.CopyFrom(original)
    for path in paths:
        _copy_path(overrides, job, path.split("."))
    return job


def _copy_path(source: Message, target: Message, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    descriptor = source.DESCRIPTOR.fields_by_name[head]
    if not rest:
        if descriptor.message_type is not None:
            target.ClearField(head)
            if source.HasField(head):
                getattr(target, head).CopyFrom(getattr(source, head))
        elif descriptor.has_presence and not source.HasField(head):
            target.ClearField(head)
        else:
            setattr(target, head, getattr(source, head))
        return
    _copy_path(getattr(source, head), getattr(target, head), rest)


def valid_override_path(path: str) -> bool:
    parts = path.split(".")
    if parts == ["display_name"] or parts == ["config"]:
        return True
    message: Any = pb.TrainingConfig.DESCRIPTOR
    if parts[0] != "config" or len(parts) < 2:
        return False
    for index, part in enumerate(parts[1:]):
        field_descriptor = message.fields_by_name.get(part)
        if field_descriptor is None:
            return False
        if field_descriptor.message_type is None or field_descriptor.message_type.name in ("Struct", "Resolution"):
            return index == len(parts) - 2
        message = field_descriptor.message_type
    return True
