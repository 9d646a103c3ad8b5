"""How long other calls wait while the dataset service refuses million-tag requests, against the
same calls on an idle service (the refusal must come from the count alone, before any tag is
looked at, so the others barely notice)."""

from __future__ import annotations

import statistics
import threading
import time

import grpc

from benchmarks.harness import dataset_stub, embedded_store, photos
from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc

PINGS = 200
HUGE_TAGS = 1_000_000


def _ping_ms(stub: dataset_pb2_grpc.DatasetServiceStub, dataset: str) -> list[float]:
    samples = []
    for _ in range(PINGS):
        start = time.perf_counter()
        stub.GetDataset(pb.GetDatasetRequest(name=dataset))
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _refuse_until(stub: dataset_pb2_grpc.DatasetServiceStub, image: str, done: threading.Event) -> None:
    request = pb.AddImageTagsRequest(name=image, tags=[""] * HUGE_TAGS)
    while not done.is_set():
        try:
            stub.AddImageTags(request)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise


def main() -> dict[str, float]:
    print(f"GetDataset latency, idle and while {HUGE_TAGS:,}-tag AddImageTags requests are refused")
    with embedded_store() as store, dataset_stub(store) as stub:
        dataset = stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
            display_name="bench oversized", family=pb.MODEL_FAMILY_SD15))).name
        data = photos(1)[0]
        image = stub.UploadImage(iter([
            pb.UploadImageRequest(metadata=pb.UploadImageMetadata(
                parent=dataset, role=pb.IMAGE_ROLE_TRAINING, filename="a.jpg", size_bytes=len(data))),
            pb.UploadImageRequest(chunk=data),
        ])).name
        idle = _ping_ms(stub, dataset)
        done = threading.Event()
        refuser = threading.Thread(target=_refuse_until, args=(stub, image, done))
        refuser.start()
        try:
            loaded = _ping_ms(stub, dataset)
        finally:
            done.set()
            refuser.join()
    figures = {
        "idle_median_ms": statistics.median(idle), "idle_max_ms": max(idle),
        "loaded_median_ms": statistics.median(loaded), "loaded_max_ms": max(loaded),
    }
    figures["median_ratio"] = figures["loaded_median_ms"] / figures["idle_median_ms"]
    print(f"  idle     median {figures['idle_median_ms']:6.2f} ms  max {figures['idle_max_ms']:7.2f} ms")
    print(f"  refusing median {figures['loaded_median_ms']:6.2f} ms  max {figures['loaded_max_ms']:7.2f} ms  "
          f"({figures['median_ratio']:.2f}x the idle median; the slowest call should stay well under a second)")
    return figures


if __name__ == "__main__":
    main()
