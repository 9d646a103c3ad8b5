"""Crop boxes: focus (around the main subject) and centre, plus rendering.

Focus crop needs no downloaded model. The subject map is spectral-residual
saliency (Hou & Zhang, CVPR 2007) on a small greyscale copy, boosted where
the detector from the `nudenet` wheel finds faces and bodies. The crop is the
largest window of the target aspect (so no resolution is thrown away) placed
where it holds the most of that map. Because the window spans the image's
full height or width, the search is one-dimensional: a prefix sum over
column (or row) totals scores every position at once. When a face is found,
only the placements that keep it whole with headroom are searched
(face_framing says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

from services.common.body_detector import FACE_LABELS, Detection
from services.dataset.face_framing import allowed_offsets, face_boxes, framed_face

SALIENCY_SIDE = 96
DETECTOR_SIDE = 320


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    width: int
    height: int

    def fits(self, width: int, height: int) -> bool:
        return (
            self.left >= 0 and self.top >= 0 and self.width > 0 and self.height > 0
            and self.left + self.width <= width and self.top + self.height <= height
        )


class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Detection]: ...


def max_window(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int]:
    """The largest window of the target aspect inside width x height."""
    if width * target_height >= height * target_width:
        window_h = height
        window_w = min(width, round(height * target_width / target_height))
    else:
        window_w = width
        window_h = min(height, round(width * target_height / target_width))
    return max(window_w, 1), max(window_h, 1)


def center_box(width: int, height: int, target_width: int, target_height: int) -> Box:
    window_w, window_h = max_window(width, height, target_width, target_height)
    return Box((width - window_w) // 2, (height - window_h) // 2, window_w, window_h)


def spectral_residual_saliency(grey: np.ndarray) -> np.ndarray:
    """Saliency map of a small float32 greyscale image, same shape, summing to 1."""
    spectrum = np.fft.fft2(grey)
    log_amplitude = np.log(np.abs(spectrum) + 1e-8).astype(np.float32)
    phase = np.angle(spectrum)
    residual = log_amplitude - cv2.blur(log_amplitude, (3, 3), borderType=cv2.BORDER_REPLICATE)
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * phase))) ** 2
    sigma = max(grey.shape) / 32
    saliency = cv2.GaussianBlur(saliency.astype(np.float32), (0, 0), sigma)
    total = float(saliency.sum())
    return saliency / total if total > 0 else np.full_like(saliency, 1.0 / saliency.size)


def subject_map(small_rgb: np.ndarray, detections: list[Detection], scale: float) -> np.ndarray:
    """Where the subject is, on a grid of at most SALIENCY_SIDE px; sums to 1.

    `detections` are in the pixel space of `small_rgb` multiplied by `scale`
    (so callers may run the detector on a different copy).
    """
    h, w = small_rgb.shape[:2]
    factor = SALIENCY_SIDE / max(h, w)
    grid_w, grid_h = max(1, round(w * factor)), max(1, round(h * factor))
    grey = cv2.cvtColor(small_rgb, cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (grid_w, grid_h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    saliency = spectral_residual_saliency(grey)
    if not detections:
        return saliency
    boost = np.zeros_like(saliency)
    ys, xs = np.mgrid[0:grid_h, 0:grid_w].astype(np.float32)
    for det in detections:
        left, top, bw, bh = (v * scale * factor for v in det.box)
        cx, cy = left + bw / 2, top + bh / 2
        # Faces decide framing; a covered belly or foot only hints at a person.
        weight = det.score * (3.0 if det.label in FACE_LABELS else 1.0)
        sx, sy = max(bw / 2, 1.0), max(bh / 2, 1.0)
        boost += weight * np.exp(-(((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2) / 2)
    total = float(boost.sum())
    if total <= 0:
        return saliency
    return 0.35 * saliency + 0.65 * boost / total


def best_window(subject: np.ndarray, width: int, height: int, window_w: int, window_h: int,
                allowed: tuple[int, int] | None = None) -> Box:
    """Place a window_w x window_h window (image pixels) where it covers most of `subject`,
    at an offset within `allowed` (inclusive) when given."""
    if window_w >= width and window_h >= height:
        return Box(0, 0, width, height)
    horizontal = window_h >= height
    profile = subject.sum(axis=0 if horizontal else 1)
    extent, span = (width, window_w) if horizontal else (height, window_h)
    cells = len(profile)
    # Resample the 1-D profile to image pixels so every pixel offset is scored.
    pixel_profile = np.interp((np.arange(extent) + 0.5) * cells / extent - 0.5, np.arange(cells), profile)
    prefix = np.concatenate([[0.0], np.cumsum(pixel_profile)])
    sums = prefix[span:] - prefix[:-span]
    offsets = np.arange(len(sums))
    # Among near-equal placements prefer the centred one (stable, unsurprising).
    centre = (extent - span) / 2
    sums = sums - 1e-6 * sums.max(initial=0) * np.abs(offsets - centre) / max(extent, 1)
    if allowed is not None:
        sums = np.where((offsets >= allowed[0]) & (offsets <= allowed[1]), sums, -np.inf)
    start = int(np.argmax(sums))
    return Box(start, 0, window_w, window_h) if horizontal else Box(0, start, window_w, window_h)


def detector_pixels(small_rgb: Image.Image) -> np.ndarray:
    """The copy that a focus crop analyses: at most DETECTOR_SIDE px on its longer side."""
    if max(small_rgb.size) > DETECTOR_SIDE:
        small_rgb = small_rgb.copy()
        small_rgb.thumbnail((DETECTOR_SIDE, DETECTOR_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(small_rgb)


def focus_box(small_rgb: Image.Image, width: int, height: int, target_width: int, target_height: int,
              detector: Detector | None) -> Box:
    """The focus crop of a width x height image, judged on `small_rgb`: any downscaled
    copy of it (a few hundred pixels is plenty; the detector sees 320)."""
    window_w, window_h = max_window(width, height, target_width, target_height)
    if window_w == width and window_h == height:
        return Box(0, 0, width, height)
    pixels = detector_pixels(small_rgb)
    detections = detector.detect(pixels) if detector is not None else []
    subject = subject_map(pixels, detections, scale=1.0)
    faces = face_boxes(detections, scale_x=width / pixels.shape[1], scale_y=height / pixels.shape[0])
    face = framed_face(faces, window_w, window_h)
    if face is None:
        return best_window(subject, width, height, window_w, window_h)
    along_width = window_h >= height
    extent, span = (width, window_w) if along_width else (height, window_h)
    allowed = allowed_offsets(face, along_width=along_width, extent=extent, span=span)
    return best_window(subject, width, height, window_w, window_h, allowed)


def render_crop(rgb: Image.Image, box: Box, target_width: int, target_height: int) -> tuple[Image.Image, bool]:
    """The crop resized to the target; True when that meant upscaling."""
    region = rgb.crop((box.left, box.top, box.left + box.width, box.top + box.height))
    upscaled = box.width < target_width or box.height < target_height
    if region.size != (target_width, target_height):
        region = region.resize((target_width, target_height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return region, upscaled
