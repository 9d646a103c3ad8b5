"""Preparing a dataset: cropping its images to a training size and waiting for the background tagger."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc
from tqdm import tqdm

from kiln.errors import KilnError
from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import dataset_pb2_grpc

CROP_MODES = {"focus": dpb.CROP_MODE_FOCUS, "center": dpb.CROP_MODE_CENTER}
# The square size of each family: the crop without a size.
SQUARE = {dpb.MODEL_FAMILY_SD15: 512, dpb.MODEL_FAMILY_SDXL: 1024}
# How often the tagger's progress is looked at.
TAGGING_POLL_SECONDS = 0.5


def crop_images(stub: dataset_pb2_grpc.DatasetServiceStub, dataset: dpb.Dataset, mode: str, width: int,
                height: int, images: Sequence[str], progress: bool) -> dpb.CropImagesResponse:
    if mode not in CROP_MODES:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown crop mode {mode!r}",
                        [("mode", "focus or center")])
    if not (width and height):
        width = height = SQUARE.get(dataset.family, 512)
    last = dpb.CropImagesResponse()
    with tqdm(desc=f"{mode} crop {width}x{height}", unit="img", disable=not progress) as bar:
        for last in stub.CropImages(dpb.CropImagesRequest(parent=dataset.name, names=images, mode=CROP_MODES[mode],
                                                          target_width=width, target_height=height)):
            bar.total = last.total
            bar.n = last.done
            bar.refresh()
    return last


def wait_for_tagging(list_images: Callable[[], list[dpb.Image]], timeout: float, progress: bool,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> list[dpb.Image]:
    deadline = clock() + timeout
    with tqdm(desc="auto-tagging", unit="img", disable=not progress) as bar:
        while True:
            images = list_images()
            pending = sum(image.auto_tagging.state == dpb.TAGGING_STATE_PENDING for image in images)
            bar.total = len(images)
            bar.n = len(images) - pending
            bar.refresh()
            if not pending:
                return images
            if clock() >= deadline:
                raise KilnError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"{pending} image(s) still wait for the tagger after {timeout:g} s",
                                hint="wait longer (timeout=…), or check that the tagger service runs")
            sleep(TAGGING_POLL_SECONDS)
