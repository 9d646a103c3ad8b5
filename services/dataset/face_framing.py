"""Where a focus crop's window may sit when the detector found a face.

Saliency alone drifts towards whatever is busiest: a landscape crop of a portrait is pulled down
onto the body and background and cuts the top of the head. So faces come first: the window is
restricted to the placements that keep the face box whole with headroom above it, and only then
does saliency choose among them. The rules, strictest first, until one can be met:

1. the face box and the head above it, with the eyes between the window's upper third and its
   middle (the photographers' rule for headroom);
2. the face box and the head above it;
3. the face box, with all the headroom the window allows;
4. (a window smaller than the face) the eyes, at the window's upper third.

Across the window (the side a landscape window spans in full) the head needs no headroom; it keeps
the face box with a margin for ears and hair, else the face box, else the face's centre.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.body_detector import FACE_LABELS, Detection

# The detector's face box runs from the brows to the chin; the crown of the head sits about this
# many face heights above it, and the eyes this far down it.
HEADROOM = 0.9
EYE_LINE = 0.35
# Ears and hair beside the face box, in face widths on each side.
SIDE_MARGIN = 0.2
# A thousandth of a pixel is float noise, not a pixel of face.
PIXEL_NOISE = 1e-3


@dataclass(frozen=True)
class FaceBox:
    """A face in image pixels."""

    left: float
    top: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height

    @property
    def head_top(self) -> float:
        return self.top - HEADROOM * self.height

    @property
    def eye_line(self) -> float:
        return self.top + EYE_LINE * self.height

    def union(self, other: FaceBox) -> FaceBox:
        left, top = min(self.left, other.left), min(self.top, other.top)
        return FaceBox(left, top, max(self.right, other.right) - left, max(self.bottom, other.bottom) - top)


def face_boxes(detections: Iterable[Detection], scale_x: float, scale_y: float) -> list[FaceBox]:
    """The faces among `detections`, their boxes scaled from the analysed copy to the original
    (each axis on its own: the copy's sides were rounded separately)."""
    faces = []
    for detection in detections:
        if detection.label in FACE_LABELS:
            left, top, width, height = detection.box
            faces.append(FaceBox(left * scale_x, top * scale_y, width * scale_x, height * scale_y))
    return faces


def framed_face(faces: list[FaceBox], window_w: int, window_h: int) -> FaceBox | None:
    """What the window must keep: every face when they fit together, else the largest one."""
    if not faces:
        return None
    together = faces[0]
    for face in faces[1:]:
        together = together.union(face)
    if together.width <= window_w and together.height <= window_h:
        return together
    return max(faces, key=lambda face: face.width * face.height)


def allowed_offsets(face: FaceBox, *, along_width: bool, extent: int, span: int) -> tuple[int, int]:
    """The window offsets (inclusive) that frame `face`, for a window of `span` pixels sliding
    over `extent` pixels along the image's width (`along_width`) or its height."""
    last = extent - span
    if along_width:
        margin = SIDE_MARGIN * face.width
        tiers = [
            _containing(face.left - margin, face.right + margin, span),
            _containing(face.left, face.right, span),
        ]
        fallback = (face.left + face.right) / 2 - span / 2
    else:
        head_top = max(face.head_top, 0.0)
        head = _containing(head_top, face.bottom, span)
        eyes_in_band = (face.eye_line - span / 2, face.eye_line - span / 3)
        # The most headroom the window allows: the first whole offset whose bottom edge holds the chin.
        most_headroom = math.ceil(face.bottom - span - PIXEL_NOISE)
        tiers = [
            _intersect(head, eyes_in_band),
            head,
            (most_headroom, min(most_headroom, face.top)),
        ]
        fallback = face.eye_line - span / 3
    for low, high in tiers:
        clamped = _clamp(low, high, last)
        if clamped is not None:
            return clamped
    offset = min(max(round(fallback), 0), last)
    return offset, offset


def _containing(start: float, end: float, span: int) -> tuple[float, float]:
    """Offsets of a window of `span` that holds [start, end]: empty (low > high) when it is too small."""
    return end - span, start


def _intersect(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return max(a[0], b[0]), min(a[1], b[1])


def _clamp(low: float, high: float, last: int) -> tuple[int, int] | None:
    """Whole-pixel offsets in [low, high] that keep the window inside the image, if any."""
    first_offset = max(math.ceil(low - PIXEL_NOISE), 0)
    last_offset = min(math.floor(high + PIXEL_NOISE), last)
    return (first_offset, last_offset) if first_offset <= last_offset else None
