"""The command line a service with a database shares: `python -m services.<service>` serves (as
`… serve` does), and `… migrate` brings its tables to the newest schema and says from which
revision to which (the migration step of a deployment, run before the services)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

import sqlalchemy as sa
from alembic.util import CommandError

from services.common.database import create_engine
from services.common.database_urls import scheme_hint, shown_url
from services.common.migrations import SchemaMigrations
from services.common.settings_errors import BadSettings, load_settings


class DatabaseSettings(Protocol):
    database_timeout_seconds: float
    database_connect_timeout_seconds: float

    def database_url(self) -> str: ...


def add_migrate_command(commands: argparse._SubParsersAction, service: str) -> None:
    migrate = commands.add_parser("migrate", help="bring the database to the newest schema, then exit")
    migrate.add_argument("--database-url", default=None,
                         help=f"the database (default: KILN_{service.upper()}_DATABASE_URL, else the SQLite file "
                              "under KILN_DATA_DIR)")


def migrate_command(schema: SchemaMigrations, settings: DatabaseSettings, database_url: str | None = None) -> int:
    """Run the migration; 0 with what it did on stdout, 2 with why not (and what to do) on stderr."""
    url = database_url or settings.database_url()
    shown = shown_url(url)
    try:
        engine = create_engine(url, timeout=settings.database_timeout_seconds,
                               connect_timeout=settings.database_connect_timeout_seconds, pool_size=1)
    except (sa.exc.ArgumentError, ValueError, ModuleNotFoundError) as error:
        hint = scheme_hint(url) or ": write postgresql://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:////PATH/FILE.db"
        print(f"error: {schema.service}: not a database URL Kiln can use: {shown} ({error}){hint}", file=sys.stderr)
        return 2
    except OSError as error:
        # SQLite: the database's folder could not be made.
        print(f"error: {schema.service}: can't create the folder of {shown} ({error.strerror}: {error.filename}): "
              "give a path in a folder that exists and is writable", file=sys.stderr)
        return 2
    try:
        upgrade = schema.upgrade(engine)
    except sa.exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
        print(f"error: {schema.service}: could not migrate {shown}: {reason}", file=sys.stderr)
        return 2
    except CommandError as error:
        print(f"error: {schema.service}: {error} (downgrades are not supported)", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"{schema.service}: {upgrade.describe()} ({shown}, version table {schema.version_table})")
    return 0


def service_main(service: str, schema: SchemaMigrations, serve: Callable[[], None],
                 settings: Callable[[], DatabaseSettings], argv: Sequence[str] | None = None) -> int:
    """`python -m services.<service> [serve | migrate [--database-url URL]]`."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}",
                                     description=f"the {service} service: serve it (the default), or migrate its "
                                                 "database")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve (the default)")
    add_migrate_command(commands, service)
    args = parser.parse_args(argv)
    try:
        loaded = load_settings(settings)  # a bad value stops either command before it starts
    except BadSettings as error:
        print(f"error: {service}: {error}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        return migrate_command(schema, loaded, args.database_url)
    serve()
    return 0
