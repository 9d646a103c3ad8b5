"""Where a run's outputs go: a writer interface keyed like the object store layout (DESIGN §4).

The trainer service points a writer at ``trainingJobs/{j}/``; the CLI and tests use a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class ArtifactWriter(Protocol):
    def write(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def read(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None; used to resume from a checkpoint."""
        ...

    def list(self, prefix: str) -> list[str]: ...


class LocalDirectoryWriter:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise KeyError(f"key {key!r} is outside {self.root}")
        return path

    def write(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader (or a resumed run) never sees half a file.
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)

    def read(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.endswith(".partial")
        )


class ArtifactKeys:
    """Keys of one run's outputs, relative to the writer's root."""

    CONFIG = "config.json"
    PLAN = "plan.json"

    @staticmethod
    def lora(epoch: int) -> str:
        return f"epochs/{epoch}/lora.safetensors"

    @staticmethod
    def preview(epoch: int, index: int) -> str:
        return f"epochs/{epoch}/previews/{index}.png"

    @staticmethod
    def preview_record(epoch: int) -> str:
        return f"epochs/{epoch}/previews.json"

    @staticmethod
    def step_lora(step: int) -> str:
        """An extra LoRA saved on request between epochs."""
        return f"steps/{step}/lora.safetensors"

    @staticmethod
    def checkpoint(epoch: int) -> str:
        return f"epochs/{epoch}/checkpoint.pt"

    @staticmethod
    def contact_sheet(epoch: int) -> str:
        return f"epochs/{epoch}/contact_sheet.png"
