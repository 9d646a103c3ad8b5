"""A backup on disk:

    DEST/manifest.json          what the backup holds (written last: a backup without it is incomplete)
    DEST/databases/<name>.dump  one `pg_dump -Fc` archive per database
    DEST/objects/<key>          every object of the bucket, under its key
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
from dataclasses import asdict, dataclass, field

FORMAT = 1
MANIFEST = "manifest.json"


class BackupError(Exception):
    """A backup or restore can't go on; the message says why and what to do."""


@dataclass(frozen=True)
class DatabaseDump:
    """One database's archive, and the services whose tables it holds (they may share one)."""

    services: list[str]
    file: str
    url: str  # where it was dumped from, without its password


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    content_type: str


@dataclass
class Manifest:
    created: str
    bucket: str
    databases: list[DatabaseDump] = field(default_factory=list)
    objects: list[StoredObject] = field(default_factory=list)
    format: int = FORMAT

    @staticmethod
    def now(bucket: str) -> Manifest:
        return Manifest(created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), bucket=bucket)

    def write(self, root: pathlib.Path) -> None:
        partial = root / f"{MANIFEST}.partial"
        partial.write_text(json.dumps(asdict(self), indent=1))
        os.replace(partial, root / MANIFEST)

    @staticmethod
    def read(root: pathlib.Path) -> Manifest:
        path = root / MANIFEST
        if not path.is_file():
            raise BackupError(f"{root} is not a complete backup: it has no {MANIFEST}")
        damaged = (f"{path} is damaged ({{}}): restore another backup, or `create` a new one; a manifest "
                   "is written only once the backup is complete")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as error:  # unreadable, not UTF-8, not JSON
            raise BackupError(damaged.format(error)) from error
        if not isinstance(raw, dict):
            raise BackupError(damaged.format("not a JSON object"))
        if raw.get("format") != FORMAT:
            raise BackupError(f"{path}: backup format {raw.get('format')!r}, this release reads format {FORMAT}")
        try:
            return Manifest(created=str(raw["created"]), bucket=str(raw["bucket"]),
                            databases=[DatabaseDump(**entry) for entry in raw["databases"]],
                            objects=[StoredObject(**entry) for entry in raw["objects"]])
        except KeyError as error:
            raise BackupError(damaged.format(f"no {error.args[0]!r}")) from error
        except TypeError as error:  # an entry that is not an object, or has missing or unknown keys
            raise BackupError(damaged.format(f"an entry does not fit: {error}")) from error


def object_path(root: pathlib.Path, key: str) -> pathlib.Path:
    """Where an object's bytes lie in a backup; a key that would lead outside it is refused."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise BackupError(f"object key {key!r} can't be stored as a file; the backup can't hold it")
    return root / "objects" / pathlib.Path(*parts)
