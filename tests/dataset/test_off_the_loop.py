"""The event loop serves every call of the service: hashing a large upload must not hold it."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest

from tests.dataset.helpers import image_bytes, new_dataset, upload_messages

REAL_SHA256 = hashlib.sha256


class WatchedSha256:
    """hashlib.sha256, noting which thread hashes anything of a megabyte or more."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def __call__(self, data: bytes = b"", **options: Any) -> Any:
        if len(data) >= 1024 * 1024:
            self.threads.append(threading.current_thread())
        return REAL_SHA256(data, **options)


def test_large_uploads_are_hashed_off_the_event_loop(stub, aio, monkeypatch: pytest.MonkeyPatch) -> None:
    async def current_thread() -> threading.Thread:
        return threading.current_thread()

    loop_thread = aio.run(current_thread())
    watched = WatchedSha256()
    monkeypatch.setattr(hashlib, "sha256", watched)
    dataset = new_dataset(stub)
    data = image_bytes(1024, 1024, seed=7300)
    assert len(data) > 2 * 1024 * 1024
    image = stub.UploadImage(upload_messages(dataset.name, data, chunk=512 * 1024))
    assert image.sha256 == REAL_SHA256(data).hexdigest()
    assert watched.threads, "the upload was never hashed"
    assert loop_thread not in watched.threads
