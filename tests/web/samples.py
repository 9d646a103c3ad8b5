"""Datasets of the bundled sample photos, arranged through the API for the pages' tests."""

from __future__ import annotations

from collections.abc import Iterable

from kiln import Client
from services.common.bundled_data import samples_dir


def dataset_of_samples(api: Client, display_name: str, photos: Iterable[str], *, head_tag: str = "") -> str:
    """A new sd15 dataset of the named bundled sample photos, tagged and screened by the stack's
    tagger (the call returns once every image has its verdict), with `head_tag`, when given, at the
    head of every caption. Returns the dataset's name."""
    dataset = api.create_dataset(display_name, "sd15")
    for photo in photos:
        api.upload_file(dataset.name, samples_dir() / photo)
    api.wait_for_tagging(dataset.name, progress=False)
    if head_tag:
        api.add_tag(dataset.name, head_tag, head=True)
    return dataset.name


def first_samples(count: int) -> list[str]:
    """The first `count` bundled sample photos by file name, the same on every run."""
    return sorted(p.name for p in samples_dir().iterdir() if p.suffix in (".png", ".jpg"))[:count]
