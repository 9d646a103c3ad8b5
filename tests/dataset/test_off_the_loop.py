"""The event loop serves every call of the service: hashing a large upload must not hold it."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest

from services.dataset import uploads_rpc
from tests.dataset.helpers import image_bytes, new_dataset, upload_messages


class WatchedHashlib:
    """hashlib, noting which thread hashes anything of a megabyte or more."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(hashlib, name)

    def sha256(self, data: bytes = b"") -> Any:
        if len(data) >= 1024 * 1024:
            self.threads.append(threading.current_thread())
        return hashlib.sha256(data)


def test_large_uploads_are_hashed_off_the_event_loop(stub, aio, monkeypatch: pytest.MonkeyPatch) -> None:
    watched = WatchedHashlib()
    monkeypatch.setattr(uploads_rpc, "hashlib", watched)
    dataset = new_dataset(stub)
    data = image_bytes(1024, 1024, seed=7300)
    assert len(data) > 2 * 1024 * 1024
    image = stub.UploadImage(upload_messages(dataset.name, data, chunk=512 * 1024))
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert watched.threads, "the upload was never hashed"
    assert aio._thread not in watched.threads
