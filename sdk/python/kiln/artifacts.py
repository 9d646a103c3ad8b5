"""Artifacts (LoRA files, previews, generated images) streamed to files, checked against their sha256."""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
from collections.abc import Callable

import grpc

from kiln.errors import KilnError
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_pb2_grpc

_EXTENSIONS = {"application/octet-stream": ".safetensors", "image/png": ".png", "image/jpeg": ".jpg",
               "image/webp": ".webp"}


def extension_of(artifact: pb.Artifact) -> str:
    if artifact.name.endswith("/lora"):
        return ".safetensors"
    return _EXTENSIONS.get(artifact.content_type, "")


def save_artifact(stub: trainer_pb2_grpc.TrainerServiceStub, name: str, path: pathlib.Path,
                  expected_sha256: str = "") -> tuple[pathlib.Path, pb.Artifact]:
    """Streams the artifact to `path` (written whole or not at all); raises DATA_LOSS when its bytes
    don't hash to what the artifact (and `expected_sha256`, when given) says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    artifact: pb.Artifact | None = None
    responses = stub.ReadArtifact(pb.ReadArtifactRequest(name=name))
    try:
        with partial.open("wb") as out:
            for response in responses:
                if response.HasField("artifact"):
                    artifact = response.artifact
                else:
                    digest.update(response.chunk)
                    out.write(response.chunk)
        if artifact is None:
            raise KilnError(grpc.StatusCode.DATA_LOSS, f"the stream of {name} carried no artifact description")
        received = digest.hexdigest()
        wanted = {sha for sha in (artifact.sha256, expected_sha256) if sha}
        if wanted and wanted != {received}:  # (an artifact without a recorded hash can't be checked)
            raise KilnError(grpc.StatusCode.DATA_LOSS,
                            f"{name} arrived with sha256 {received}, not {' / '.join(sorted(wanted))}",
                            hint="download it again")
        partial.replace(path)
    finally:
        responses.cancel()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return path, artifact


def epoch_result(job: pb.TrainingJob, epoch: int) -> pb.EpochResult:
    for result in job.epochs:
        if result.epoch == epoch and not result.on_request:
            return result
    saved = ", ".join(str(r.epoch) for r in job.epochs if not r.on_request) or "none yet"
    raise KilnError(grpc.StatusCode.NOT_FOUND, f"{job.name} has no saved epoch {epoch}",
                    [("epoch", f"one of the saved epochs: {saved}")],
                    hint="pick a saved epoch (kiln jobs get shows them) or wait for the job to save it")


def epoch_file_name(job: pb.TrainingJob, epoch: int) -> str:
    stem = job.config.output_name or job.name.rsplit("/", 1)[-1]
    return f"{stem}-epoch{epoch:03d}.safetensors"


def generate(stub: trainer_pb2_grpc.TrainerServiceStub, request: pb.GenerateImagesRequest, folder: pathlib.Path,
             on_saved: Callable[[pathlib.Path], None] | None = None) -> list[pathlib.Path]:
    """Runs a test generation, saving each image (and a grid's sheet, last) into `folder` as it comes."""
    saved: list[pathlib.Path] = []
    for answer in stub.GenerateImages(request):
        kind = answer.WhichOneof("content")
        if kind == "image":
            image = answer.image
            name = (f"epoch{image.epoch}-strength{image.strength:g}-r{image.row}c{image.column}-{image.index}"
                    f"-seed{image.seed}{extension_of(image.image) or '.png'}")
            path, _ = save_artifact(stub, image.image.name, folder / name, image.image.sha256)
        elif kind == "sheet":
            path, _ = save_artifact(stub, answer.sheet.name, folder / f"grid{extension_of(answer.sheet) or '.png'}",
                                    answer.sheet.sha256)
        else:
            continue  # queued: waiting for a worker
        saved.append(path)
        if on_saved is not None:
            on_saved(path)
    return saved
