"""The real CLIP tokenizer, built offline from the BPE file that ships in the open_clip wheel.

Nothing is fetched from a hub: the Makefile extracts ``bpe_simple_vocab_16e6.txt.gz`` into the
virtualenv and this module turns it into a transformers ``CLIPTokenizer`` with all 49,408 tokens.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.bundled_data import share_dir

if TYPE_CHECKING:
    from transformers.models.clip.tokenization_clip import CLIPTokenizer

VOCAB_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
MODEL_MAX_LENGTH = 77
# open_clip keeps the first 48,894 merges of the file (49152 - 256 - 2); the rest are unused.
_MERGE_COUNT = 49152 - 256 - 2


class VocabularyMissingError(FileNotFoundError):
    pass


def clip_vocab_path() -> Path:
    path = share_dir() / VOCAB_FILE_NAME
    if not path.is_file():
        raise VocabularyMissingError(f"CLIP BPE vocabulary not found at {path}; run `make setup`")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte->printable-character table, which CLIP's vocabulary is written in.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


@functools.lru_cache(maxsize=4)
def _vocab_and_merges(path: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    with gzip.open(path) as stream:
        lines = stream.read().decode("utf-8").split("\n")
    merges = [_merge_pair(line) for line in lines[1 : _MERGE_COUNT + 1]]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def _merge_pair(line: str) -> tuple[str, str]:
    first, second = line.split()
    return first, second


def build_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """CLIP tokenizer as SD uses it; SDXL's second tokenizer pads with ``"!"`` instead of EOS."""
    from .model_libraries import CLIPTokenizer

    vocab, merges = _vocab_and_merges(str(clip_vocab_path()))
    return CLIPTokenizer(
        # transformers annotates merges as strings, but the tokenizers BPE it builds refuses
        # "a b" strings and takes only (a, b) pairs.
        vocab=dict(vocab), merges=list(merges),  # type: ignore[arg-type]
        pad_token=pad_token, model_max_length=MODEL_MAX_LENGTH,
    )


def load_tokenizer(folder: Path) -> CLIPTokenizer:
    """A model folder's tokenizer, loaded once per process while its files stay the same.

    Loading parses the 3.6 MB ``tokenizer.json`` in Python (~0.45 s on 2 cores, most of a tiny
    model's load), and every run of a process (a test session, the demo, a training child's job)
    loads the same few folders. Callers share the instance: the engine only encodes with it, and
    every call sets the padding and truncation it wants.
    """
    folder = Path(folder).resolve()
    files = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    return _cached_tokenizer(str(folder), files)


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(folder: str, files: tuple[tuple[str, int, int], ...]) -> CLIPTokenizer:
    from .model_libraries import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
