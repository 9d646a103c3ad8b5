"""Adapters from an S3 object-store client (``services.common.objectstore.ObjectStore`` or anything
with the same four methods) to the engine's reader and writer interfaces."""

from __future__ import annotations

from typing import Protocol


class ObjectStoreClient(Protocol):
    def get_bytes(self, key: str) -> bytes: ...

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str) -> list[str]: ...


class ObjectStoreReader:
    def __init__(self, client: ObjectStoreClient) -> None:
        self.client = client

    def read(self, key: str) -> bytes:
        return self.client.get_bytes(key)


class ObjectStoreWriter:
    """Writes a run's outputs under ``prefix`` (e.g. ``trainingJobs/{j}/``)."""

    def __init__(self, client: ObjectStoreClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/") + "/"

    def write(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_bytes(self.prefix + key, data, content_type)

    def read(self, key: str) -> bytes | None:
        full = self.prefix + key
        return self.client.get_bytes(full) if self.client.exists(full) else None

    def list(self, prefix: str) -> list[str]:
        return [key[len(self.prefix):] for key in self.client.list_keys(self.prefix + prefix)]
