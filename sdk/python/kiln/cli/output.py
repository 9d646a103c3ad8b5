"""What a command prints: text for people, or JSON (the messages' proto3 JSON form) with `--json`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from kiln.errors import KilnError


def as_data(value: Any) -> Any:
    if isinstance(value, Message):
        return MessageToDict(value)
    if isinstance(value, dict):
        return {key: as_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_data(item) for item in value]
    return value


class Output:
    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode

    def result(self, value: Any, text: str | Iterable[str]) -> None:
        """The command's answer: `value` as JSON, or the text."""
        if self.json:
            print(json.dumps(as_data(value), indent=2))
        else:
            for line in [text] if isinstance(text, str) else text:
                print(line)

    def line(self, value: Any) -> None:
        """One JSON object on its own line (a stream's items)."""
        print(json.dumps(as_data(value)), flush=True)

    def note(self, text: str) -> None:
        """Side remarks for people (never mixed into JSON output)."""
        print(text, file=sys.stderr)

    def error(self, error: KilnError) -> None:
        if self.json:
            print(json.dumps({"error": error.to_dict()}), file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
