"""Uploading images: one file as a client stream of chunks, or a folder's PNG/JPEG files with a
progress bar, skipping those the dataset already holds (by sha256) so an interrupted upload resumes."""

from __future__ import annotations

import hashlib
import os
import pathlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from tqdm import tqdm

from kiln.errors import KilnError
from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc

# Chunks well under UploadImage's limit of 4 MiB.
CHUNK_BYTES = 1024 * 1024
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# A kohya-style folder keeps each image's caption beside it (photo.png, photo.txt): read as its tags.
CAPTION_SUFFIX = ".txt"
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"))
# The same file deleted and uploaded again this many times gets as many ids.
_MAX_REUPLOADS = 100


@dataclass(frozen=True)
class LocalImage:
    path: pathlib.Path
    sha256: str
    size_bytes: int
    tags: tuple[str, ...]


def file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def caption_tags(image: pathlib.Path) -> tuple[str, ...]:
    caption = image.with_suffix(CAPTION_SUFFIX)
    if not caption.is_file():
        return ()
    return tuple(tag.strip() for tag in caption.read_text(encoding="utf-8").split(",") if tag.strip())


def image_problem(path: pathlib.Path) -> str | None:
    """Why `path` can't be uploaded as an image, or None."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not a PNG or JPEG file (.png, .jpg, .jpeg): move it out of the folder"
    with path.open("rb") as stream:
        head = stream.read(8)
    if not any(head.startswith(signature) for signature, _ in _SIGNATURES):
        return f"named {path.suffix} but its content is not a PNG or JPEG image"
    return None


def local_image(path: pathlib.Path) -> LocalImage:
    if not path.is_file():
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{path} is not a file",
                        [(str(path), "no such file: give a PNG or JPEG file, or a folder of them")])
    problem = image_problem(path)
    if problem:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{path} can't be uploaded", [(str(path), problem)],
                        hint="upload PNG or JPEG files only")
    return LocalImage(path, file_sha256(path), path.stat().st_size, caption_tags(path))


def folder_images(folder: pathlib.Path) -> list[LocalImage]:
    """The folder's images in name order; every file that isn't one is named in one error (hidden
    files and captions are not images and not a problem)."""
    if not folder.is_dir():
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{folder} is not a folder",
                        [("folder", "a folder of PNG/JPEG images")])
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() != CAPTION_SUFFIX)
    problems = [(str(p), problem) for p in files if (problem := image_problem(p))]
    if problems:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{len(problems)} file(s) in {folder} are not PNG or JPEG images; nothing was uploaded",
                        problems, hint="move the files listed out of the folder (captions as .txt are fine)")
    return [local_image(p) for p in files]


def upload_request_id(parent: str, role: int, image: LocalImage, attempt: int = 0) -> str:
    """The same upload (dataset, role, file name, bytes, caption) always gets the same id: a retry after
    a lost answer gets the first answer back instead of a second image."""
    key = "\0".join((parent, str(role), image.path.name, image.sha256, *image.tags, str(attempt)))
    return "sdk-upload-" + hashlib.sha256(key.encode()).hexdigest()[:48]


def _messages(parent: str, role: int, image: LocalImage, request_id: str) -> Iterator[pb.UploadImageRequest]:
    yield pb.UploadImageRequest(metadata=pb.UploadImageMetadata(
        parent=parent, role=role, filename=image.path.name,  # type: ignore[arg-type]
        size_bytes=image.size_bytes, tags=image.tags, request_id=request_id))
    with image.path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            yield pb.UploadImageRequest(chunk=chunk)


def upload_image(stub: dataset_pb2_grpc.DatasetServiceStub, parent: str, image: LocalImage, role: int) -> pb.Image:
    for attempt in range(_MAX_REUPLOADS):
        uploaded: pb.Image = stub.UploadImage(_messages(parent, role, image,
                                                        upload_request_id(parent, role, image, attempt)))
        # The id's first answer may name an image deleted since: then this is a new upload of the same file.
        if not _deleted(stub, uploaded.name):
            return uploaded
    raise KilnError(grpc.StatusCode.ABORTED, f"{image.path} was deleted from {parent} each time it was uploaded",
                    hint="stop deleting it while it uploads, then try again")


def _deleted(stub: dataset_pb2_grpc.DatasetServiceStub, name: str) -> bool:
    try:
        stub.GetImage(pb.GetImageRequest(name=name))
    except KilnError as error:
        if error.code == grpc.StatusCode.NOT_FOUND:
            return True
        raise
    return False


def upload_folder(stub: dataset_pb2_grpc.DatasetServiceStub, list_images: Callable[[str, int], Iterator[pb.Image]],
                  parent: str, folder: pathlib.Path, role: int, progress: bool) -> list[pb.Image]:
    """Uploads the folder's images the dataset lacks; returns those uploaded now."""
    images = folder_images(folder)
    # A file the service stored in another form (normalised, trimmed) is known by its upload's sha256.
    held = {sha for image in list_images(parent, role) for sha in (image.sha256, image.upload_sha256) if sha}
    missing: list[LocalImage] = []
    for image in images:  # a file twice in the folder is uploaded once
        if image.sha256 not in held:
            missing.append(image)
            held.add(image.sha256)
    uploaded: list[pb.Image] = []
    total_bytes = sum(image.size_bytes for image in missing)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"upload {folder.name or folder}",
              disable=not progress) as bar:
        if progress and len(missing) < len(images):
            bar.write(f"{len(images) - len(missing)} of {len(images)} images already in {parent}: skipped",
                      file=sys.stderr)
        for image in missing:
            bar.set_postfix_str(image.path.name)
            uploaded.append(upload_image(stub, parent, image, role))
            bar.update(image.size_bytes)
    return uploaded


def as_path(path: str | os.PathLike[str]) -> pathlib.Path:
    return pathlib.Path(path).expanduser()
