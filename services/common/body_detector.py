"""People, faces and exposure from the detector that ships inside the `nudenet` wheel.

The wheel carries a YOLOv8n export (`320n.onnx`, 18 classes). We run it with our
own ONNX Runtime session instead of `nudenet.NudeDetector` so that thread
counts are ours to set, preprocessing starts from an in-memory RGB array, and
post-processing is vectorised (the package loops over 2,100 rows in Python).
"""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass

import cv2
import numpy as np
import onnxruntime as ort

LABELS: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
FACE_LABELS = frozenset({"FACE_FEMALE", "FACE_MALE"})


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    # Box in the pixel coordinates of the analysed image: left, top, width, height.
    box: tuple[float, float, float, float]


def bundled_model_path() -> pathlib.Path:
    spec = importlib.util.find_spec("nudenet")
    if spec is None or spec.origin is None:
        raise RuntimeError("the `nudenet` package is not installed: run `make setup`")
    return pathlib.Path(spec.origin).parent / "320n.onnx"


class BodyDetector:
    """Thread-safe: ONNX Runtime sessions may be run from several threads at once."""

    def __init__(
        self,
        model_path: pathlib.Path | None = None,
        *,
        intra_op_threads: int = 1,
        score_threshold: float = 0.25,
        nms_threshold: float = 0.45,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model_path or bundled_model_path()), options, providers=["CPUExecutionProvider"]
        )
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        side = model_input.shape[2]
        self._side = side if isinstance(side, int) else 320
        self._score_threshold = score_threshold
        self._nms_threshold = nms_threshold

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Detect on an RGB uint8 array (H, W, 3); boxes come back in its pixel space."""
        height, width = rgb.shape[:2]
        side = max(height, width)
        # The model was trained on images padded at the bottom/right to a square.
        padded = np.zeros((side, side, 3), dtype=np.uint8)
        padded[:height, :width] = rgb
        resized = cv2.resize(padded, (self._side, self._side), interpolation=cv2.INTER_AREA)
        blob = np.ascontiguousarray(resized.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        (output,) = self._session.run(None, {self._input_name: blob})
        return self._decode(output[0].T, scale=side / self._side, width=width, height=height)

    def _decode(self, rows: np.ndarray, *, scale: float, width: int, height: int) -> list[Detection]:
        class_scores = rows[:, 4:]
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), class_ids]
        keep = scores >= self._score_threshold
        if not keep.any():
            return []
        rows, class_ids, scores = rows[keep], class_ids[keep], scores[keep]
        cx, cy, w, h = (rows[:, i] * scale for i in range(4))
        left = np.clip(cx - w / 2, 0, width)
        top = np.clip(cy - h / 2, 0, height)
        w = np.minimum(w, width - left)
        h = np.minimum(h, height - top)
        boxes = np.stack([left, top, w, h], axis=1)
        picked = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), self._score_threshold, self._nms_threshold)
        return [
            Detection(
                label=LABELS[int(class_ids[i])],
                score=float(scores[i]),
                box=(float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3])),
            )
            for i in np.asarray(picked).reshape(-1)
        ]
