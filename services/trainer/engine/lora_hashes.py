"""The Additional Networks hashes of a LoRA file (``sshs_model_hash``, ``sshs_legacy_hash``), as
kohya's ``precalculate_safetensors_hashes`` defines them: over the file as saved with its ``ss_*``
metadata only, so other metadata (titles, thumbnails) can change without changing them. The
model hash covers the tensor bytes alone; the legacy one (A1111's old 8-digit hash, 64 KiB at
offset 1 MiB) also sees the header's length. Bytes in, no torch: a published file's hashes are
computed where nothing trains."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def training_metadata(metadata: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in metadata.items() if key.startswith("ss_")}


def safetensors_file(metadata: dict[str, str], entries: dict[str, Any], tensor_bytes: bytes) -> bytes:
    """A safetensors file of already laid-out tensors (`entries`: name -> dtype, shape, offsets, in
    the order the header lists them), written as the safetensors library writes one: compact JSON
    with `__metadata__` first, UTF-8, padded with spaces to 8 bytes."""
    text = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + tensor_bytes


def addnet_hashes(saved: bytes) -> tuple[str, str]:
    """(model hash, legacy hash) of `saved`, a file written with its training metadata only."""
    header_length = int.from_bytes(saved[:8], "little")
    model = hashlib.sha256(saved[8 + header_length:]).hexdigest()
    legacy = hashlib.sha256(saved[0x100000:0x110000]).hexdigest()[:8]
    return model, legacy
