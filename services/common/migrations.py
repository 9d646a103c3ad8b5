"""A service's schema revisions (Alembic): where its database stands, bringing it to the newest,
and refusing to serve on a schema the code was not written for.

Replicas that start at once on one PostgreSQL take turns: the upgrade runs under a
transaction-level advisory lock keyed by the service's version table, so the first migrates and
the others then find the schema at head. SQLite needs no lock: the upgrade's transaction begins
with BEGIN IMMEDIATE (see database.create_engine), which already admits one writer at a time.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
from dataclasses import dataclass

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from services.common.errors import ConfigurationError

log = logging.getLogger(__name__)
EMPTY = "(empty)"


class SchemaNotCurrent(ConfigurationError):
    """The database's schema is not the one this release serves, and start-up may not migrate it."""


@dataclass(frozen=True)
class Upgrade:
    """What one upgrade did: the revision before and after (None: no schema)."""

    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        if not self.changed:
            return f"already at {self.after or EMPTY}"
        return f"migrated from {self.before or EMPTY} to {self.after}"


@dataclass(frozen=True)
class SchemaMigrations:
    """One service's migrations: `service` names its command (`python -m services.<service> migrate`)."""

    service: str
    script_location: pathlib.Path
    version_table: str

    @property
    def lock_key(self) -> int:
        """The advisory lock's key: a stable signed 64-bit number of the version table's name."""
        digest = hashlib.sha256(f"kiln-migrations:{self.version_table}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(self.script_location))
        config.attributes["version_table"] = self.version_table
        return config

    def head(self) -> str | None:
        return ScriptDirectory.from_config(self._config()).get_current_head()

    def current(self, connection: Connection) -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table": self.version_table})
        return context.get_current_revision()

    def upgrade(self, engine: Engine, target: str = "head") -> Upgrade:
        """Bring the schema to `target`, the newest by default (blocking); safe to run from several
        processes at once."""
        config = self._config()
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # A migration may rewrite a large table: no statement ceiling while it runs. The
                # server still ends the session should this client die holding the lock.
                connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.lock_key})
            before = self.current(connection)
            config.attributes["connection"] = connection
            command.upgrade(config, target)
            after = self.current(connection)
        return Upgrade(before, after)

    def require_current(self, engine: Engine) -> str | None:
        """The schema's revision when it is the one this release serves; SchemaNotCurrent otherwise."""
        head = self.head()
        with engine.connect() as connection:
            current = self.current(connection)
        if current == head:
            return current
        step = f"`python -m services.{self.service} migrate` (the migration step)"
        if current is not None and not self._known(current):
            raise SchemaNotCurrent(
                f"the {self.service} database schema is at {current}, newer than this release ({head}); "
                "downgrades are not supported: run the release that migrated it")
        raise SchemaNotCurrent(
            f"the {self.service} database schema is at {current or EMPTY} but this release needs {head}: run {step} "
            "before starting the service (start-up migration is off: KILN_MIGRATE_ON_START=false)")

    def _known(self, revision: str) -> bool:
        try:
            return ScriptDirectory.from_config(self._config()).get_revision(revision) is not None
        except (CommandError, RevisionError):
            return False

    def prepare(self, engine: Engine, migrate_on_start: bool) -> None:
        """At start-up: migrate to head, or, where a separate step migrates, check it has."""
        if not migrate_on_start:
            self.require_current(engine)
            return
        try:
            upgrade = self.upgrade(engine)
        except CommandError as error:
            raise SchemaNotCurrent(
                f"the {self.service} database schema is at a revision this release does not know ({error}); "
                "downgrades are not supported: run the release that migrated it") from error
        if upgrade.changed:
            log.info("database schema migrated", extra={"fields": {"service": self.service,
                                                                   "from": upgrade.before, "to": upgrade.after}})
