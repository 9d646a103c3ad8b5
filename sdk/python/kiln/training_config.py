"""Training settings from TOML/JSON files and overrides by field path, checked against the messages
they fill."""

from __future__ import annotations

import json
import pathlib
import tomllib
from typing import Any

import grpc
from google.protobuf.json_format import ParseDict, ParseError

from kiln.errors import KilnError
from kiln.v1 import trainer_pb2 as tpb


def load_config(path: pathlib.Path) -> tpb.TrainingConfig:
    """A TOML or JSON file of TrainingConfig fields (kohya's names: epochs, unet_lr, network_dim,
    [preview] prompt, …)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"can't read {path}: {error.strerror}",
                        [("--config", "a readable .toml or .json file")]) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{path} is not valid {kind}",
                        [(str(path), str(error))], hint=f"fix the {kind} syntax at the place named") from None
    return parse_message(with_resolution_shorthand(data), tpb.TrainingConfig(), str(path))


def with_resolution_shorthand(data: Any) -> Any:
    """kohya writes `resolution = 512` or `resolution = "512,768"`; the message wants {width, height}."""
    if not isinstance(data, dict):
        return data
    value = data.get("resolution")
    if isinstance(value, int):
        return {**data, "resolution": {"width": value, "height": value}}
    if isinstance(value, str):
        width, _, height = value.replace("x", ",").partition(",")
        if width.strip().isdigit() and (height or width).strip().isdigit():
            return {**data, "resolution": {"width": int(width), "height": int(height or width)}}
    return data


def parse_message(data: Any, message: Any, source: str) -> Any:
    if not isinstance(data, dict):
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{source} holds no table of fields",
                        [(source, "a table of TrainingConfig fields")])
    try:
        return ParseDict(data, message)
    except ParseError as error:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{source} does not fit {message.DESCRIPTOR.name}",
                        [(source, str(error))],
                        hint="use the field names of kiln.v1.TrainingConfig (kohya's), e.g. epochs, unet_lr, "
                             "network_dim, [preview] prompt") from None


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word: a string


def overrides_of(values: dict[str, Any]) -> tuple[tpb.TrainingJob, list[str]]:
    """{"config.epochs": 3, "config.preview.prompt": "a cat", "display_name": "v2"} → the job holding
    those values and the field mask naming them."""
    data: dict[str, Any] = {}
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{path} sets a field inside a value",
                                [(path, f"{part} is set as a whole and field by field")])
        node[leaf] = value
    job = parse_message(data, tpb.TrainingJob(), "the overrides")
    return job, list(values)


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """`config.epochs=3`, `config.preview.prompt=a cat` → {path: value}; values read as JSON where
    they are (numbers, true/false, lists), else as text."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        path, equals, text = assignment.partition("=")
        path = path.strip()
        if not equals or not path:
            raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{assignment!r} is not FIELD=VALUE",
                            [("--set", "FIELD=VALUE, e.g. config.epochs=3")])
        values[path] = _value(text)
    return values


def overrides(assignments: list[str]) -> tuple[tpb.TrainingJob, list[str]]:
    """`--set` arguments: the job and the field mask."""
    return overrides_of(parse_assignments(assignments))
