"""The hashes a LoRA's metadata gives its base model (``ss_sd_model_hash``, ``ss_new_sd_model_hash``).

They are A1111's two checkpoint hashes: the old 8-digit one (SHA-256 of the 64 KiB at offset 1 MiB)
and the SHA-256 of the whole file, by which A1111 and model sites recognise a checkpoint. The
store keeps models as diffusers folders, so the hashes of a single-file checkpoint are taken when
it is imported. A model that came as a folder has no file to hash; kohya's writer then records
``IsADirectory`` for both, and so does Kiln.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OLD_HASH_OFFSET = 0x100000
OLD_HASH_LENGTH = 0x10000
FOLDER_MARKER = "IsADirectory"
_BLOCK = 1 << 20


@dataclass(frozen=True)
class CheckpointHashes:
    sd_model_hash: str
    new_sd_model_hash: str

    def as_record(self) -> dict[str, str]:
        return {"sd_model_hash": self.sd_model_hash, "new_sd_model_hash": self.new_sd_model_hash}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CheckpointHashes:
        return cls(str(record["sd_model_hash"]), str(record["new_sd_model_hash"]))


FOLDER_HASHES = CheckpointHashes(FOLDER_MARKER, FOLDER_MARKER)


def hash_checkpoint(path: Path) -> CheckpointHashes:
    """Both hashes of a single-file checkpoint, read once, a block at a time."""
    whole = hashlib.sha256()
    with path.open("rb") as file:
        file.seek(OLD_HASH_OFFSET)
        old = hashlib.sha256(file.read(OLD_HASH_LENGTH)).hexdigest()[:8]
        file.seek(0)
        while block := file.read(_BLOCK):
            whole.update(block)
    return CheckpointHashes(old, whole.hexdigest())
