"""Focus crops frame the faces the detector finds: the whole face box, with headroom above it,
at every crop size of both families (and every bucket aspect the trainer uses), on the bundled
photos of people."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kiln.v1 import dataset_pb2 as pb
from services.common.body_detector import BodyDetector, Detection
from services.common.bundled_data import samples_dir
from services.dataset.convert import CROP_SIZES
from services.dataset.cropping import Box, detector_pixels, focus_box, max_window
from services.dataset.face_framing import (
    EYE_LINE,
    HEADROOM,
    FaceBox,
    allowed_offsets,
    face_boxes,
    framed_face,
)
from services.trainer.engine.config import TrainingConfig
from services.trainer.engine.planning import bucket_rules
from tests.dataset.helpers import new_dataset, upload

PEOPLE = ("astronaut.png", "camera.png")
# A pixel of rounding between the detector's copy and the original.
SLACK = 1.0


def _target_sizes() -> list[tuple[int, int]]:
    """The service's crop sizes for both families and the trainer's buckets at both resolutions."""
    config = TrainingConfig()
    sizes = {size for side in (512, 1024) for size in bucket_rules(config, (side, side)).predefined()}
    sizes.update(size for family_sizes in CROP_SIZES.values() for size in family_sizes)
    return sorted(sizes, key=lambda size: size[0] / size[1])


TARGETS = _target_sizes()


def _photo(name: str, portrait: bool) -> Image.Image:
    """The sample as shipped (square), or cut to a 2:3 portrait around its middle."""
    image = Image.open(samples_dir() / name).convert("RGB")
    if portrait:
        width = image.height * 2 // 3
        left = (image.width - width) // 2
        image = image.crop((left, 0, left + width, image.height))
    return image


@pytest.fixture(scope="module")
def detector() -> BodyDetector:
    return BodyDetector()


def _faces(image: Image.Image, detector: BodyDetector) -> list[FaceBox]:
    pixels = detector_pixels(image)
    return face_boxes(detector.detect(pixels), scale_x=image.width / pixels.shape[1],
                      scale_y=image.height / pixels.shape[0])


@pytest.mark.parametrize("portrait", [False, True], ids=["as-shipped", "portrait"])
@pytest.mark.parametrize("name", PEOPLE)
def test_the_face_and_its_headroom_survive_every_target_aspect(name, portrait, detector) -> None:
    image = _photo(name, portrait)
    faces = _faces(image, detector)
    assert len(faces) == 1, "the sample ships with one face the detector finds"
    face = faces[0]
    head_top = max(face.head_top, 0.0)
    assert len(TARGETS) > 40 and (768, 512) in TARGETS and (1536, 640) in TARGETS
    kept_head = 0
    for target in TARGETS:
        box = focus_box(image, image.width, image.height, *target, detector)
        window_w, window_h = max_window(image.width, image.height, *target)
        assert (box.width, box.height) == (window_w, window_h), target
        if window_w >= face.width and window_h >= face.height:
            assert _holds(box, face.left, face.top, face.right, face.bottom), (target, box, face)
        if window_h >= face.bottom - head_top:
            assert box.top <= head_top + SLACK, (target, box, face)
            kept_head += 1
        elif window_h >= face.height:
            # Too short for the whole head: all the headroom that fits, the chin at the bottom edge.
            assert abs(box.top + box.height - face.bottom) <= SLACK, (target, box, face)
    assert kept_head > len(TARGETS) // 2


def _holds(box: Box, left: float, top: float, right: float, bottom: float) -> bool:
    return (box.left <= left + SLACK and box.top <= top + SLACK
            and box.left + box.width >= right - SLACK and box.top + box.height >= bottom - SLACK)


@pytest.mark.parametrize(("name", "portrait"), [("astronaut.png", True), ("camera.png", False)])
def test_the_eyes_sit_between_the_upper_third_and_the_middle_where_the_window_allows(name, portrait,
                                                                                      detector) -> None:
    image = _photo(name, portrait)
    face = _faces(image, detector)[0]
    above_eyes = face.eye_line - max(face.head_top, 0.0)
    checked = 0
    for target in TARGETS:
        window_w, window_h = max_window(image.width, image.height, *target)
        # Room for the whole head with the eyes in the upper half, and the eyes far enough down the
        # picture to sit a third of the way down the window.
        if window_w < image.width or window_h < 2 * above_eyes or face.eye_line < window_h / 3:
            continue
        box = focus_box(image, image.width, image.height, *target, detector)
        eyes = (face.eye_line - box.top) / box.height
        assert 1 / 3 - 0.01 <= eyes <= 1 / 2 + 0.01, (target, box, eyes)
        checked += 1
    assert checked >= 3


def test_framing_rules_on_a_known_face() -> None:
    # A face 100 px tall, 300 px down a 1000 px tall image; the head starts HEADROOM above it.
    face = FaceBox(left=400, top=300, width=80, height=100)
    head_top = 300 - HEADROOM * 100
    eyes = 300 + EYE_LINE * 100
    # A tall window: the head inside and the eyes between its upper third and its middle.
    low, high = allowed_offsets(face, along_width=False, extent=1000, span=600)
    assert low <= high
    for offset in (low, high):
        assert offset <= head_top and offset + 600 >= 400
        assert 600 / 3 - 1 <= eyes - offset <= 600 / 2 + 1
    # Too short for the eye band but tall enough for the head: anywhere that keeps the head.
    assert allowed_offsets(face, along_width=False, extent=1000, span=200) == (200, 210)
    # Too short for the head: the face box with all the headroom there is.
    assert allowed_offsets(face, along_width=False, extent=1000, span=120) == (280, 280)
    # Shorter than the face: the eyes at the upper third.
    assert allowed_offsets(face, along_width=False, extent=1000, span=60) == (315, 315)
    # Sideways: the face with room for the ears, else the face box, else its centre.
    assert allowed_offsets(face, along_width=True, extent=1000, span=200) == (296, 384)
    assert allowed_offsets(face, along_width=True, extent=1000, span=90) == (390, 400)
    assert allowed_offsets(face, along_width=True, extent=1000, span=40) == (420, 420)
    # Near the top of the picture: offsets never leave the image.
    near_top = FaceBox(left=400, top=20, width=80, height=100)
    assert allowed_offsets(near_top, along_width=False, extent=1000, span=300)[0] == 0


def test_several_faces_are_framed_together_when_they_fit_else_the_largest() -> None:
    small = FaceBox(left=100, top=100, width=40, height=50)
    large = FaceBox(left=600, top=120, width=80, height=100)
    assert framed_face([small, large], window_w=700, window_h=400) == FaceBox(100, 100, 580, 120)
    assert framed_face([small, large], window_w=300, window_h=400) == large
    assert framed_face([], window_w=300, window_h=400) is None


def test_faces_are_taken_from_face_detections_only() -> None:
    detections = [Detection("FACE_MALE", 0.9, (10.0, 20.0, 30.0, 40.0)),
                  Detection("BELLY_COVERED", 0.9, (0.0, 0.0, 50.0, 50.0))]
    assert face_boxes(detections, scale_x=2.0, scale_y=3.0) == [FaceBox(20.0, 60.0, 60.0, 120.0)]


@pytest.mark.parametrize("family", [pb.MODEL_FAMILY_SD15, pb.MODEL_FAMILY_SDXL], ids=["sd15", "sdxl"])
def test_the_service_keeps_the_head_at_every_crop_size(stub, detector, family) -> None:
    portrait = _photo("astronaut.png", portrait=True)
    buffer = io.BytesIO()
    portrait.save(buffer, format="PNG")
    face = _faces(portrait, detector)[0]
    dataset = new_dataset(stub, family=family)
    upload(stub, dataset.name, buffer.getvalue(), filename="astronaut-portrait.png")
    for width, height in CROP_SIZES[family]:
        events = list(stub.CropImages(pb.CropImagesRequest(parent=dataset.name, mode=pb.CROP_MODE_FOCUS,
                                                           target_width=width, target_height=height)))
        box = events[0].image.crop.box
        crop = Box(box.left, box.top, box.width, box.height)
        assert _holds(crop, face.left, max(face.head_top, 0), face.right, face.bottom), (width, height, crop)
        assert np.isclose(crop.width / crop.height, width / height, rtol=0.02)
