"""`python -m services.backup create DEST` / `restore SRC`: Kiln's PostgreSQL databases and its
bucket, with the settings the services read (KILN_DATASET_DATABASE_URL, KILN_TRAINER_DATABASE_URL,
KILN_GATEWAY_DATABASE_URL, KILN_S3__…).

`create` dumps the databases first, then copies the bucket: every object a dumped record names
was written before its record, so it is in the copy. Objects written after the dumps are extra,
and the dataset service's sweeps remove those under its prefixes once restored.
`restore` refuses a database that has tables or a bucket that has objects unless --force."""

from __future__ import annotations

import argparse
import pathlib
import sys
import threading
from collections.abc import Sequence

import psycopg
import urllib3
from minio.error import S3Error
from tqdm import tqdm

from services.backup.databases import PostgresDatabase, tool_path
from services.backup.layout import BackupError, DatabaseDump, Manifest
from services.backup.objects import Bucket
from services.backup.settings import SERVICES, BackupSettings
from services.common.objectstore import ObjectStore
from services.common.settings_errors import BadSettings, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.backup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="back up the databases, then the bucket, into DEST")
    create.add_argument("dest", help="a folder that does not exist yet, or is empty")
    restore = commands.add_parser("restore", help="put a backup back: the databases, then the bucket")
    restore.add_argument("src", help="a folder `create` wrote")
    restore.add_argument("--force", action="store_true",
                         help="restore into databases that have tables (dropping those the backup brings back) "
                              "and a bucket that has objects (overwriting those the backup holds)")
    for sub in (create, restore):
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        sub.add_argument("--parallel", type=int, default=8, help="objects copied at once (default 8)")
    return parser


class _Bar:
    """A byte-counting progress bar on stderr that threads may advance."""

    def __init__(self, total: int, what: str, enabled: bool) -> None:
        self._bar = tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                         disable=not enabled)
        self._lock = threading.Lock()

    def advance(self, size: int) -> None:
        with self._lock:
            self._bar.update(size)

    def close(self) -> None:
        self._bar.close()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _databases(settings: BackupSettings) -> dict[str, list[str]]:
    """Each database URL and the services whose tables it holds (several may share one)."""
    by_url: dict[str, list[str]] = {}
    for service, url in settings.database_urls().items():
        by_url.setdefault(url, []).append(service)
    return by_url


def create(args: argparse.Namespace, settings: BackupSettings) -> int:
    root = pathlib.Path(args.dest)
    if root.exists() and not root.is_dir():
        raise BackupError(f"{root} is a file, not a folder: back up into a new folder")
    if root.exists() and any(root.iterdir()):
        raise BackupError(f"{root} is not empty: back up into a new folder")
    databases = _databases(settings)
    if not databases:
        raise BackupError("no PostgreSQL database is configured: set KILN_DATASET_DATABASE_URL, "
                          "KILN_TRAINER_DATABASE_URL and KILN_GATEWAY_DATABASE_URL as the services have them")
    sources = [(PostgresDatabase(url), services) for url, services in databases.items()]  # each URL checked first
    for service in SERVICES:
        if service not in settings.database_urls():
            _say(f"note: KILN_{service.upper()}_DATABASE_URL is not set; the {service} service's SQLite file is "
                 "not part of this backup")
    tool_path("pg_dump")  # before anything is written
    bucket = Bucket(ObjectStore(settings.s3), args.parallel)
    bucket.check()
    (root / "databases").mkdir(parents=True, exist_ok=True)
    manifest = Manifest.now(settings.s3.bucket)
    for database, services in sources:
        archive = f"databases/{'+'.join(services)}.dump"
        _say(f"dumping {database.shown} ({', '.join(services)})")
        database.dump(root / archive)
        manifest.databases.append(DatabaseDump(services, archive, database.shown))
    # Listed after the dumps: every object their records name exists by now.
    listing = bucket.listing()
    bar = _Bar(sum(size for _, size in listing), f"copying {len(listing)} objects", not args.no_progress)
    try:
        manifest.objects = bucket.copy_out([key for key, _ in listing], root, bar.advance)
    finally:
        bar.close()
    vanished = len(listing) - len(manifest.objects)
    if vanished:
        _say(f"note: {vanished} objects were deleted while they were being copied and are not in the backup")
    manifest.write(root)
    size = sum(entry.size for entry in manifest.objects)
    print(f"backed up {len(manifest.databases)} databases and {len(manifest.objects)} objects ({size} bytes) "
          f"of bucket {manifest.bucket!r} into {root}")
    return 0


def restore(args: argparse.Namespace, settings: BackupSettings) -> int:
    root = pathlib.Path(args.src)
    if not root.is_dir():
        raise BackupError(f"{root} is not a folder: give the folder `create` wrote")
    manifest = Manifest.read(root)
    if manifest.databases:
        tool_path("pg_restore")
    urls = settings.database_urls()
    targets: list[tuple[DatabaseDump, PostgresDatabase]] = []
    for dump in manifest.databases:
        wanted = {urls.get(service, "") for service in dump.services}
        if "" in wanted or len(wanted) != 1:
            names = ", ".join(f"KILN_{service.upper()}_DATABASE_URL" for service in dump.services)
            raise BackupError(f"{dump.file} holds the tables of {', '.join(dump.services)}: set {names} to the one "
                              "(empty) PostgreSQL database to restore it into")
        targets.append((dump, PostgresDatabase(wanted.pop())))
    bucket = Bucket(ObjectStore(settings.s3), args.parallel)
    # Nothing is written until every target is known to be fresh (or --force says to overwrite).
    if not args.force:
        for _, database in targets:
            if database.table_count():
                raise BackupError(f"{database.shown} already has tables: restore into a fresh database, or pass "
                                  "--force to drop and replace the tables the backup brings back")
        if not bucket.is_empty():
            raise BackupError(f"bucket {settings.s3.bucket!r} already has objects: restore into an empty bucket, "
                              "or pass --force to overwrite the objects the backup holds")
    else:
        for _, database in targets:
            database.table_count()  # reachable, before anything changes
        bucket.is_empty()
    for dump, database in targets:
        _say(f"restoring {dump.file} into {database.shown}")
        database.restore(root / dump.file, replace=args.force)
    size = sum(entry.size for entry in manifest.objects)
    bar = _Bar(size, f"restoring {len(manifest.objects)} objects", not args.no_progress)
    try:
        bucket.put_back(manifest.objects, root, bar.advance)
    finally:
        bar.close()
    print(f"restored {len(targets)} databases and {len(manifest.objects)} objects ({size} bytes) into bucket "
          f"{settings.s3.bucket!r} from the backup of {manifest.created}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.parallel < 1:
        print("error: --parallel must be 1 or more", file=sys.stderr)
        return 2
    try:
        settings = load_settings(BackupSettings)
        if not settings.s3.endpoint:
            raise BackupError("KILN_S3__ENDPOINT is not set: set it (and KILN_S3__ACCESS_KEY, KILN_S3__SECRET_KEY, "
                              "KILN_S3__BUCKET) to the object store the services use, as host:port")
        return create(args, settings) if args.command == "create" else restore(args, settings)
    except (BackupError, BadSettings) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the backup's folder or files: not writable, disk full, …
        print(f"error: {error.strerror or error} ({error.filename}); the {args.command} is incomplete: fix that, "
              "then run it again", file=sys.stderr)
        return 2
    except (S3Error, urllib3.exceptions.HTTPError) as error:
        print(f"error: the object store failed mid-way ({error}); the {args.command} is incomplete: run it "
              "again", file=sys.stderr)
        return 2
    except psycopg.Error as error:
        print(f"error: the database failed mid-way ({error}); the {args.command} is incomplete: run it again",
              file=sys.stderr)
        return 2
