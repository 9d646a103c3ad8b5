"""What every benchmark needs: sample images at a realistic size, an embedded S3,
the dataset service in-process, and honest timing."""

from __future__ import annotations

import contextlib
import io
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import grpc
from PIL import Image, ImageOps

from kiln.v1 import dataset_pb2_grpc
from services.common.bundled_data import samples_dir
from services.common.embedded_s3 import EmbeddedS3
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings, ServerSettings
from services.dataset.server import running_dataset_service
from services.dataset.settings import DatasetSettings

TWO_MEGAPIXELS = (1732, 1155)




def photos(count: int, size: tuple[int, int] = TWO_MEGAPIXELS, quality: int = 92) -> list[bytes]:
    """`count` distinct JPEGs of real photos at `size` (variations of the bundled samples)."""
    sources = [Image.open(p).convert("RGB") for p in sorted(samples_dir().glob("*.*")) if p.suffix != ""]
    out = []
    for index in range(count):
        image = sources[index % len(sources)]
        variant = index // len(sources)
        if variant % 2:
            image = ImageOps.mirror(image)
        # A different crop per variant so every file (and its sha256) differs.
        inset = variant // 2
        image = image.crop((inset, inset // 2, image.width - inset // 2, image.height - inset))
        image = ImageOps.fit(image, size, Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


@contextlib.contextmanager
def embedded_store() -> Iterator[ObjectStore]:
    directory = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bench-s3-"))
    server = EmbeddedS3(directory, "bench", "bench-secret").start()
    try:
        store = ObjectStore(ObjectStoreSettings(endpoint=server.endpoint, access_key="bench",
                                                secret_key="bench-secret", bucket="bench"))
        store.ensure_bucket()
        yield store
    finally:
        server.stop()


@contextlib.contextmanager
def dataset_stub(store: ObjectStore, **settings: object) -> Iterator[dataset_pb2_grpc.DatasetServiceStub]:
    loop = LoopThread()
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    config = DatasetSettings(data_dir=data_dir, s3=store._settings, server=ServerSettings(port=0),
                             json_logs=False, log_level="WARNING", **settings)  # type: ignore[arg-type]
    try:
        with loop.context(running_dataset_service(config, store)) as service, \
                grpc.insecure_channel(service.address) as channel:
            yield dataset_pb2_grpc.DatasetServiceStub(channel)
    finally:
        loop.close()


def best_of(rounds: int, run: Callable[[], None]) -> float:
    """Fastest wall time of several rounds: the least disturbed by the rest of the machine."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000
