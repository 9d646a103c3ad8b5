"""Data `make setup` takes out of wheels into the virtualenv: the CLIP vocabulary and sample photos."""

from __future__ import annotations

import pathlib
import sys


def share_dir() -> pathlib.Path:
    return pathlib.Path(sys.prefix) / "share" / "kiln"


def samples_dir() -> pathlib.Path:
    """Public-domain photos (scikit-image's samples)."""
    return share_dir() / "samples"
