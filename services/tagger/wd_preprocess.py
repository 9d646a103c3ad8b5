"""WD14 input tensors, step for step as SmilingWolf's reference (wd-tagger space, app.py):
white-composited RGB -> pad to a white centred square -> PIL bicubic resize to the model size
-> float32 0-255 -> BGR, NHWC. PIL (not OpenCV) does the resize because PIL's bicubic filter
widens when downscaling (antialiasing) and the models were trained on PIL's output."""

from __future__ import annotations

import numpy as np
from PIL import Image

from services.tagger.images import WHITE


def pad_to_white_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    canvas = Image.new("RGB", (side, side), WHITE)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def wd_input(image: Image.Image, size: int) -> np.ndarray:
    """One (size, size, 3) float32 BGR array from an RGB image."""
    square = pad_to_white_square(image)
    if square.size[0] != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]
