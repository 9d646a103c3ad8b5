"""Connect to the configured object store, or start the embedded one."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

from services.common.embedded_s3 import EmbeddedS3
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings


@dataclass
class StoreHandle:
    store: ObjectStore
    embedded: EmbeddedS3 | None

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def open_store(settings: ObjectStoreSettings, data_dir: pathlib.Path) -> StoreHandle:
    embedded = None
    endpoint = settings.endpoint
    if not endpoint:
        directory = settings.embedded_dir if settings.embedded_dir.is_absolute() else data_dir / "s3"
        embedded = EmbeddedS3(directory, settings.access_key, settings.secret_key.get_secret_value()).start()
        endpoint = embedded.endpoint
    store = ObjectStore(settings, endpoint=endpoint)
    try:
        store.ensure_bucket()
    except Exception:
        if embedded is not None:
            embedded.stop()
        raise
    return StoreHandle(store, embedded)
