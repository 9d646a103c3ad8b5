"""Fixtures for the tagger tests: sample photos, the detector and generated WD14 models."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from services.common.body_detector import BodyDetector
from services.common.bundled_data import samples_dir
from services.tagger.synthetic import write_linear_wd_model
from tests.tagger.helpers import WD_TAGS


@pytest.fixture(scope="session")
def samples() -> pathlib.Path:
    directory = samples_dir()
    if not (directory / "astronaut.png").is_file():
        pytest.fail(f"sample photos missing in {directory}: run `make setup`")
    return directory


@pytest.fixture(scope="session")
def detector() -> BodyDetector:
    return BodyDetector()


@pytest.fixture
def make_wd_model(tmp_path: pathlib.Path) -> Callable[..., pathlib.Path]:
    """Write a linear WD14-format model (see services.tagger.synthetic) and return its directory."""
    counter = iter(range(1000))

    def make(
        bias: Sequence[float],
        tags: Sequence[tuple[str, int]] = WD_TAGS,
        weights: np.ndarray | None = None,
        **options: object,
    ) -> pathlib.Path:
        return write_linear_wd_model(tmp_path / f"model{next(counter)}", tags, bias, weights=weights, **options)

    return make
