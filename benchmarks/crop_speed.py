"""Focus-crop speed: milliseconds per 2-megapixel image on one core, and the wall
time to crop 1000 such images through the dataset service on this machine.

Goal: <= 50 ms median for the focus box of a 2 MP image on one core.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import time

import cv2
from PIL import Image

from benchmarks.harness import dataset_stub, embedded_store, median_ms, photos
from kiln.v1 import dataset_pb2 as pb
from services.common.body_detector import BodyDetector
from services.dataset.crop_render import choose_box
from services.dataset.cropping import render_crop

SINGLE_CORE_SAMPLES = 60
BATCH = 1000
CHUNK = 1024 * 1024


def single_core(images: list[bytes]) -> dict[str, float]:
    cv2.setNumThreads(1)
    detector = BodyDetector(intra_op_threads=1)
    width, height = Image.open(io.BytesIO(images[0])).size
    choose_box(images[0], width, height, "focus", 1024, 1024, detector)  # warm-up
    box_times, render_times = [], []
    for data in images[:SINGLE_CORE_SAMPLES]:
        start = time.perf_counter()
        box = choose_box(data, width, height, "focus", 1024, 1024, detector)
        box_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        picture, _ = render_crop(Image.open(io.BytesIO(data)).convert("RGB"), box, 1024, 1024)
        picture.save(io.BytesIO(), format="PNG", compress_level=1)
        render_times.append(time.perf_counter() - start)
    results = {"focus_box_ms": median_ms(box_times), "render_png_ms": median_ms(render_times)}
    print(f"  one core, 2 MP JPEG: focus box {results['focus_box_ms']:.1f} ms median including decode "
          f"(goal <= 50 ms); rendering the crop to a 1024 px PNG for viewing {results['render_png_ms']:.0f} ms "
          "(done on first view, not during batch crop)")
    return results


def through_service(images: list[bytes]) -> dict[str, float]:
    with embedded_store() as store, dataset_stub(store, image_workers=os.cpu_count() or 2) as stub:
        dataset = stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
            display_name="crop bench", family=pb.MODEL_FAMILY_SDXL)))

        def send(item: tuple[int, bytes]) -> None:
            index, data = item
            stub.UploadImage(iter([
                pb.UploadImageRequest(metadata=pb.UploadImageMetadata(
                    parent=dataset.name, role=pb.IMAGE_ROLE_TRAINING, filename=f"{index}.jpg")),
                pb.UploadImageRequest(chunk=data)]))

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(send, enumerate(images)))
        start = time.perf_counter()
        events = list(stub.CropImages(pb.CropImagesRequest(parent=dataset.name, mode=pb.CROP_MODE_FOCUS,
                                                           target_width=1024, target_height=1024)))
        wall = time.perf_counter() - start
    assert events[-1].done == len(images)
    print(f"  {len(images)} images through CropImages on {os.cpu_count()} cores: {wall:.1f} s wall "
          f"({len(images) / wall:.1f} images/s: download, decode, detect, saliency, record)")
    return {"crop_1000_wall_s": wall}


def main() -> dict[str, float]:
    print("focus crop speed")
    images = photos(BATCH)
    return {**single_core(images), **through_service(images)}


if __name__ == "__main__":
    main()
