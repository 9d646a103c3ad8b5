"""Upload throughput through the dataset service vs a direct S3 PUT of the same bytes.

The service does more than the PUT (full decode, checks, thumbnail, record),
so the goal is that this costs little: >= 0.8x the direct PUT's MB/s.
"""

from __future__ import annotations

import concurrent.futures
import itertools

from benchmarks.harness import best_of, dataset_stub, embedded_store, photos
from kiln.v1 import dataset_pb2 as pb

CHUNK = 1024 * 1024
COUNT = 36
ROUNDS = 3


def _messages(parent: str, data: bytes, index: int):  # type: ignore[no-untyped-def]
    yield pb.UploadImageRequest(metadata=pb.UploadImageMetadata(
        parent=parent, role=pb.IMAGE_ROLE_TRAINING, filename=f"{index}.jpg", size_bytes=len(data)))
    for start in range(0, len(data), CHUNK):
        yield pb.UploadImageRequest(chunk=data[start:start + CHUNK])


def main() -> dict[str, float]:
    images = photos(COUNT)
    megabytes = sum(map(len, images)) / 1e6
    results: dict[str, float] = {}
    counter = itertools.count()
    print(f"upload throughput: {COUNT} JPEGs of 2 MP, {megabytes:.1f} MB per pass, best of {ROUNDS}")
    with embedded_store() as store, dataset_stub(store) as stub:
        def direct(parallel: int) -> None:
            run = next(counter)
            with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                list(pool.map(lambda item: store.put_bytes(f"bench/direct/{run}/{item[0]}", item[1], "image/jpeg"),
                              enumerate(images)))

        def service(parallel: int) -> None:
            dataset = stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
                display_name=f"bench {next(counter)}", family=pb.MODEL_FAMILY_SDXL)))
            with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                list(pool.map(lambda item: stub.UploadImage(_messages(dataset.name, item[1], item[0])),
                              enumerate(images)))

        for parallel in (1, 4):
            direct_s = best_of(ROUNDS, lambda p=parallel: direct(p))
            service_s = best_of(ROUNDS, lambda p=parallel: service(p))
            ratio = direct_s / service_s
            results[f"upload_ratio_x{parallel}"] = ratio
            print(f"  {parallel} client(s): direct S3 PUT {megabytes / direct_s:6.1f} MB/s  "
                  f"dataset service {megabytes / service_s:6.1f} MB/s  ratio {ratio:.2f}x (goal >= 0.80x)")
    return results


if __name__ == "__main__":
    main()
