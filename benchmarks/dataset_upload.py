"""Upload throughput through the dataset service vs a direct S3 PUT of the same bytes.

The service fully decodes every upload before it answers (the product's choice),
so the least any such service pays is "verify+PUT": the same checks, then the
PUT, with no gRPC and no records. The goal is that the service adds little above
that floor: >= 0.8x of verify+PUT's MB/s in every row. The ratio to a bare
direct PUT is printed as well. The service runs as its own process, as deployed;
the clients (direct and through the service) run in this one.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import os
from collections.abc import Iterator

from benchmarks.harness import dataset_process_stub, embedded_store, photos, timed
from kiln.v1 import dataset_pb2 as pb
from services.dataset.image_check import ImageLimits, check_image

CHUNK = 1024 * 1024
CORES = len(os.sched_getaffinity(0))
ROUNDS = 3
# (label, pixels, images per pass): small photos show the fixed cost per upload, camera-size
# ones the cost per byte.
LIMITS = ImageLimits(max_bytes=50 * 1024 * 1024, max_pixels=64_000_000, min_side=64)
SIZES = (("2 MP", (1732, 1155), 36), ("12 MP", (4240, 2832), 12))


def _messages(parent: str, data: bytes, index: int) -> Iterator[pb.UploadImageRequest]:
    yield pb.UploadImageRequest(metadata=pb.UploadImageMetadata(
        parent=parent, role=pb.IMAGE_ROLE_TRAINING, filename=f"{index}.jpg", size_bytes=len(data)))
    for start in range(0, len(data), CHUNK):
        yield pb.UploadImageRequest(chunk=data[start:start + CHUNK])


def main() -> dict[str, float]:
    results: dict[str, float] = {}
    counter = itertools.count()
    with embedded_store() as store, dataset_process_stub(store) as stub:
        for label, size, count in SIZES:
            images = photos(count, size)
            megabytes = sum(map(len, images)) / 1e6
            print(f"upload throughput: {count} JPEGs of {label}, {megabytes:.1f} MB per pass, best of {ROUNDS}")

            def direct(parallel: int, images: list[bytes] = images) -> None:
                run = next(counter)
                with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                    list(pool.map(lambda item: store.put_bytes(f"bench/direct/{run}/{item[0]}", item[1],
                                                               "image/jpeg"), enumerate(images)))

            def verified(parallel: int, images: list[bytes] = images) -> None:
                # The least any verifying service pays: the same checks, then the PUT, no gRPC or records.
                run = next(counter)

                def one(item: tuple[int, bytes]) -> None:
                    check_image(item[1], LIMITS)
                    store.put_bytes(f"bench/verified/{run}/{item[0]}", item[1], "image/jpeg")

                with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                    list(pool.map(one, enumerate(images)))

            def service(parallel: int, images: list[bytes] = images) -> None:
                dataset = stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
                    display_name=f"bench {next(counter)}", family=pb.MODEL_FAMILY_SDXL)))
                with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                    list(pool.map(lambda item: stub.UploadImage(_messages(dataset.name, item[1], item[0])),
                                  enumerate(images)))

            for parallel in (1, 4):
                direct_t = timed(ROUNDS, functools.partial(direct, parallel))
                verified_t = timed(ROUNDS, functools.partial(verified, parallel))
                service_t = timed(ROUNDS, functools.partial(service, parallel))
                ratio = direct_t.wall_s / service_t.wall_s
                floor_ratio = verified_t.wall_s / service_t.wall_s
                row = f"{label.replace(' ', '').lower()}_x{parallel}"
                results[f"upload_ratio_{row}"] = ratio
                results[f"upload_vs_verify_{row}"] = floor_ratio
                print(f"  {parallel} client(s): direct S3 PUT {megabytes / direct_t.wall_s:6.1f} MB/s  "
                      f"verify+PUT {megabytes / verified_t.wall_s:6.1f} MB/s  "
                      f"dataset service {megabytes / service_t.wall_s:6.1f} MB/s  "
                      f"{floor_ratio:.2f}x of verify+PUT (goal >= 0.80x), {ratio:.2f}x of a direct PUT")
                # CPU per MB over every process involved (clients, S3 server, service): with all
                # cores busy, throughput can't exceed cores / (CPU s per MB).
                print(f"    CPU ms per MB, all processes: direct {direct_t.cpu_s / megabytes * 1e3:5.1f}  "
                      f"verify+PUT {verified_t.cpu_s / megabytes * 1e3:5.1f}  "
                      f"service {service_t.cpu_s / megabytes * 1e3:5.1f}  -> on {CORES} cores the service can't "
                      f"pass {CORES * megabytes / service_t.cpu_s:5.1f} MB/s")
    return results


if __name__ == "__main__":
    main()
