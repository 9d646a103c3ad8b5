"""The bucket's objects to files (with their size, SHA-256 and content type) and back, the bytes
put back checked against what was copied out."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import urllib3
from minio.error import S3Error

from services.backup.layout import BackupError, StoredObject, object_path
from services.common.objectstore import ObjectNotFound, ObjectStore

CHUNK = 1 << 20
# Told the bytes of each object once it is copied.
Progress = Callable[[int], None]


class Bucket:
    def __init__(self, store: ObjectStore, parallel: int = 8) -> None:
        self._store = store
        self._parallel = parallel

    def _reach(self) -> None:
        try:
            self._store.check_reachable()
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as error:
            raise BackupError(f"can't reach the object store for bucket {self._store.bucket!r}: {error}") from error

    def check(self) -> None:
        """Raises BackupError unless the store answers and the bucket exists."""
        self._reach()
        if not self._store.client.bucket_exists(bucket_name=self._store.bucket):
            raise BackupError(f"bucket {self._store.bucket!r} does not exist")

    def listing(self) -> list[tuple[str, int]]:
        """Every key in the bucket and its size."""
        self.check()
        listed = self._store.client.list_objects(bucket_name=self._store.bucket, recursive=True)
        return [(o.object_name, int(o.size or 0)) for o in listed if o.object_name and not o.is_dir]

    def is_empty(self) -> bool:
        self._reach()
        if not self._store.client.bucket_exists(bucket_name=self._store.bucket):
            return True
        listed = self._store.client.list_objects(bucket_name=self._store.bucket, recursive=True)
        return next(iter(listed), None) is None

    def copy_out(self, keys: Iterable[str], root: pathlib.Path, progress: Progress) -> list[StoredObject]:
        """Each key's bytes to its file under root. A key deleted since the listing is left out (and
        not in the returned list): deletes remove the record first, but a dump taken before that
        still holds it, so the caller says how many vanished."""
        def copy(key: str) -> StoredObject | None:
            path = object_path(root, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            try:
                stat = self._store.client.stat_object(bucket_name=self._store.bucket, object_name=key)
                with path.open("wb") as out:
                    for chunk in self._store.iter_chunks(key, CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            except (ObjectNotFound, S3Error) as error:
                if isinstance(error, S3Error) and error.code not in ("NoSuchKey", "NoSuchObject"):
                    raise
                path.unlink(missing_ok=True)
                return None
            progress(size)
            return StoredObject(key, size, digest.hexdigest(), stat.content_type or "application/octet-stream")

        with ThreadPoolExecutor(self._parallel, thread_name_prefix="backup-get") as pool:
            copied = list(pool.map(copy, keys))
        return [entry for entry in copied if entry is not None]

    def put_back(self, objects: list[StoredObject], root: pathlib.Path, progress: Progress) -> None:
        """Every object's file, checked against its SHA-256 first, into the bucket (made if missing)."""
        self._reach()
        self._store.ensure_bucket()

        def put(entry: StoredObject) -> None:
            path = object_path(root, entry.key)
            if not path.is_file():
                raise BackupError(f"{path} is missing from the backup")
            digest = hashlib.sha256()
            with path.open("rb") as source:
                for chunk in iter(lambda: source.read(CHUNK), b""):
                    digest.update(chunk)
            if digest.hexdigest() != entry.sha256 or path.stat().st_size != entry.size:
                raise BackupError(f"{path} does not match the manifest (size or SHA-256): the backup is damaged")
            self._store.client.fput_object(bucket_name=self._store.bucket, object_name=entry.key,
                                           file_path=str(path), content_type=entry.content_type)
            progress(entry.size)

        with ThreadPoolExecutor(self._parallel, thread_name_prefix="backup-put") as pool:
            list(pool.map(put, objects))
