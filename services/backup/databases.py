"""PostgreSQL databases to `pg_dump -Fc` archives and back with `pg_restore`.

The password never appears on a command line (where `ps` shows it): the tools get it through
PGPASSWORD and the rest of the URL as their connection string."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import psycopg
import sqlalchemy as sa

from services.backup.layout import BackupError
from services.common.database_urls import scheme_hint, shown_url


class PostgresDatabase:
    def __init__(self, url: str) -> None:
        try:
            parsed = sa.engine.make_url(url)
        except (sa.exc.ArgumentError, ValueError) as error:
            raise BackupError(f"not a database URL: {shown_url(url)} ({error}): write "
                              "postgresql://USER:PASSWORD@HOST:PORT/DATABASE") from error
        if scheme_hint(url):
            raise BackupError(f"{shown_url(url)}{scheme_hint(url)}")
        if parsed.get_backend_name() != "postgresql":
            raise BackupError(f"{shown_url(url)}: only PostgreSQL databases are backed up by this tool (copy a "
                              "SQLite file with `sqlite3 FILE .backup COPY`)")
        self._password = parsed.password
        self._conninfo = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
        self.shown = parsed.set(drivername="postgresql").render_as_string(hide_password=True)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self._password is not None:
            env["PGPASSWORD"] = str(self._password)
        return env

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self._conninfo, password=self._password, connect_timeout=10, autocommit=True)
        except psycopg.OperationalError as error:
            raise BackupError(f"can't reach {self.shown}: {_first_line(str(error))}") from error

    def table_count(self) -> int:
        """Tables outside PostgreSQL's own schemas: 0 for a fresh database."""
        with self._connect() as conn:
            row = conn.execute("SELECT count(*) FROM pg_catalog.pg_tables "
                               "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").fetchone()
        return int(row[0]) if row else 0

    def dump(self, archive: pathlib.Path) -> None:
        _run([tool_path("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={archive}",
              f"--dbname={self._conninfo}"], self._env(), f"pg_dump of {self.shown}")

    def restore(self, archive: pathlib.Path, *, replace: bool) -> None:
        """Into this database, which must exist; `replace` drops what the archive brings back first."""
        command = [tool_path("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
                   f"--dbname={self._conninfo}"]
        if replace:
            command += ["--clean", "--if-exists"]
        _run([*command, str(archive)], self._env(), f"pg_restore into {self.shown}")


def tool_path(name: str) -> str:
    """Where a PostgreSQL client tool is; BackupError when it is not installed."""
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found on PATH: install the PostgreSQL client tools (Debian: "
                          f"`apt-get install postgresql-client`), of the server's major version or newer")
    return found


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"{what} failed: {_first_line(result.stderr) or f'exit {result.returncode}'}")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
