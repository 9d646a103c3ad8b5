"""Publish metadata: a trained LoRA file renamed, described and given its trigger words and cover.

Only the safetensors header is rewritten; the tensor bytes after it are copied unchanged, so every
loader sees the same weights. The keys written are the ones the tools read:

- ``ss_output_name``: A1111's alias (``<lora:alias:weight>``), kohya tools;
- ``modelspec.title``, ``modelspec.description``: Stability's model spec (SwarmUI, kohya,
  Civitai/ComfyUI metadata readers);
- ``modelspec.trigger_phrase``: the model spec's activation words, comma-joined;
- ``modelspec.thumbnail``: the spec's ``data:image/jpeg;base64,…`` cover, at most 256 pixels;
- ``ssmd_display_name``, ``ssmd_description``, ``ssmd_keywords`` (the activation text, comma-joined)
  and ``ssmd_cover_images`` (a JSON list of base64 images): A1111's Additional Networks metadata
  editor.

``ss_tag_frequency`` and the other training keys are left alone. ``sshs_model_hash`` /
``sshs_legacy_hash`` are recomputed as kohya defines them (over the file with its ``ss_*``
metadata only): the model hash covers the tensor bytes and so never changes; the legacy hash also
sees the header's length, which a new ``ss_output_name`` changes.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidPublishRequest, Violation
from .lora_hashes import addnet_hashes, safetensors_file, training_metadata

THUMBNAIL_SIZE = 256
THUMBNAIL_QUALITY = 85
MAX_NAME = 200
MAX_DESCRIPTION = 20_000


def read_header(data: bytes) -> tuple[dict, int]:
    """The parsed safetensors header and the offset where the tensor bytes start."""
    if len(data) < 8:
        raise ValueError("too short for a safetensors file")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8 or length > 100_000_000:
        raise ValueError("the header length is past the end of the file")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the header is not JSON: {error}") from error
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, 8 + length


def read_metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's ``__metadata__`` (header only; the tensors aren't read)."""
    header, _ = read_header(data)
    metadata = header.get("__metadata__") or {}
    return {str(key): str(value) for key, value in metadata.items()}


def thumbnail_jpeg(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """The image shrunk to fit ``size`` pixels (never enlarged), as a JPEG."""
    picture = ImageOps.exif_transpose(image)
    if picture.mode in ("RGBA", "LA", "P"):
        rgba = picture.convert("RGBA")
        picture = Image.new("RGB", rgba.size, "white")
        picture.paste(rgba, mask=rgba.getchannel("A"))
    picture = picture.convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buffer.getvalue()


def publish_metadata(
    lora: bytes,
    *,
    name: str,
    description: str = "",
    trigger_words: Sequence[str] = (),
    thumbnail: Image.Image | bytes | None = None,
) -> bytes:
    """``lora`` with its publish metadata set: the same tensors (byte for byte), the name,
    description, trigger words and, when given, a cover image (a PIL image or encoded image
    bytes, shrunk to a ≤256-pixel JPEG). Empty description / trigger words remove those keys; no
    thumbnail keeps the file's current one. Raises :class:`InvalidPublishRequest`."""
    problems: list[Violation] = []
    header: dict = {}
    data_start = 0
    try:
        header, data_start = read_header(lora)
    except ValueError as error:
        problems.append(Violation("lora", f"not a safetensors file: {error}"))
    name = name.strip()
    if not name:
        problems.append(Violation("name", "required"))
    elif len(name) > MAX_NAME or any(ch in name for ch in "\r\n"):
        problems.append(Violation("name", f"one line of at most {MAX_NAME} characters"))
    if len(description) > MAX_DESCRIPTION:
        problems.append(Violation("description", f"at most {MAX_DESCRIPTION} characters"))
    words: list[str] = []
    for index, word in enumerate(trigger_words):
        word = word.strip()
        if not word:
            problems.append(Violation(f"trigger_words[{index}]", "empty"))
        elif "," in word:
            problems.append(Violation(f"trigger_words[{index}]", "a trigger word can't contain a comma "
                                      "(readers split the list on commas)"))
        elif word not in words:
            words.append(word)
    cover: bytes | None = None
    if thumbnail is not None:
        try:
            image = thumbnail if isinstance(thumbnail, Image.Image) else Image.open(io.BytesIO(thumbnail))
            cover = thumbnail_jpeg(image)
        except (UnidentifiedImageError, OSError, ValueError) as error:
            problems.append(Violation("thumbnail", f"not a readable image: {error}"))
    if problems:
        raise InvalidPublishRequest(problems)

    metadata = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
    keyword_text = ", ".join(words)
    updates = {
        "ss_output_name": name,
        "modelspec.title": name,
        "ssmd_display_name": name,
        "modelspec.description": description,
        "ssmd_description": description,
        "modelspec.trigger_phrase": keyword_text,
        "ssmd_keywords": keyword_text,
    }
    for key, value in updates.items():
        if value:
            metadata[key] = value
        else:
            metadata.pop(key, None)
    if cover is not None:
        encoded = base64.b64encode(cover).decode("ascii")
        metadata["modelspec.thumbnail"] = f"data:image/jpeg;base64,{encoded}"
        metadata["ssmd_cover_images"] = json.dumps([encoded])
    entries = {key: value for key, value in header.items() if key != "__metadata__"}
    tensor_bytes = lora[data_start:]
    try:
        check_tensor_layout(entries, len(tensor_bytes))
    except ValueError as error:
        raise InvalidPublishRequest([Violation("lora", f"not a safetensors file: {error}")]) from error
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = addnet_hashes(
        safetensors_file(training_metadata(metadata), entries, tensor_bytes))
    return safetensors_file(metadata, entries, tensor_bytes)


# Bytes per element of the safetensors dtypes.
_DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def check_tensor_layout(entries: dict[str, Any], data_size: int) -> None:
    """The header describes the tensor bytes exactly, as the safetensors library checks on load:
    each tensor's size from its dtype and shape, back to back, ending where the file does."""
    spans = []
    for key, info in entries.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
            count = math.prod(int(side) for side in shape)
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"tensor {key!r} has no dtype, shape and data offsets") from None
        if dtype not in _DTYPE_SIZES:
            raise ValueError(f"tensor {key!r} has an unknown dtype {dtype!r}")
        if not isinstance(begin, int) or not isinstance(end, int) or count * _DTYPE_SIZES[dtype] != end - begin:
            raise ValueError(f"tensor {key!r}: its offsets don't span its {dtype} {shape}")
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise ValueError("the tensors' bytes are not back to back")
        position = end
    if position != data_size:
        raise ValueError(f"the tensors take {position} bytes; the file holds {data_size}")
