"""PostgreSQL on a test host: a fresh cluster (initdb) served in the foreground by `postgres`, so it
can be stopped and started again like any other part."""

from __future__ import annotations

import contextlib
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable

import psycopg

from services.scaleout.hosts import Host
from services.stack_processes import ManagedProcess

PORT = 5432


def _binaries() -> pathlib.Path:
    found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
    if not found or not pathlib.Path(found, "initdb").exists():
        raise RuntimeError("PostgreSQL's server binaries were not found (pg_config --bindir): install postgresql")
    return pathlib.Path(found)


class PostgresServer:
    def __init__(self, host: Host, on_exit: Callable[[ManagedProcess], None]) -> None:
        self.host = host
        self._bin = _binaries()
        # A folder of its own in the temp dir: as root, the postgres user must reach it, which a
        # folder inside another private one would not let it.
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="kiln-scaleout-pg-"))
        self.port = host.port(PORT)
        self._on_exit = on_exit
        # initdb refuses root: as root, the server runs as the postgres user (setpriv execs, so the
        # server keeps the pid it was started with and gets signals first-hand).
        self._as_user: list[str] = (["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
                                    if os.geteuid() == 0 else [])
        self.process: ManagedProcess | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host.address}:{self.port}/{database}"

    def initialise(self) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        subprocess.run([*self._as_user, str(self._bin / "initdb"), "-D", str(self.root / "data"), "-A", "trust",
                        "-U", "postgres", "--no-sync", "-E", "UTF8"], check=True, capture_output=True, cwd=self.root)
        # A throwaway cluster on the test hosts' private network: any of them may connect.
        with (self.root / "data" / "pg_hba.conf").open("a") as rules:
            rules.write("host all all 0.0.0.0/0 trust\n")

    def start(self, timeout: float = 60.0) -> None:
        argv = self.host.argv([*self._as_user, str(self._bin / "postgres"), "-D", str(self.root / "data"),
                               "-p", str(self.port), "-k", str(self.root), "-c",
                               f"listen_addresses={self.host.address}", "-c", "fsync=off", "-c",
                               "max_connections=300"])
        self.process = ManagedProcess("postgres", argv, dict(os.environ), self.root / "postgres.log", self._on_exit,
                                      cwd=self.root)
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if self.process.returncode is not None:
                raise RuntimeError(f"PostgreSQL exited while starting:\n{self.process.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections within {timeout:.0f}s")
            time.sleep(0.1)  # polling another process's port; it can't tell us when it is ready

    def accepting(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """A fast shutdown (SIGINT: sessions are ended, in-flight transactions rolled back; SIGTERM
        would wait for every client to leave)."""
        if self.process is None:
            return
        self.process.stopping = True
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGINT)
            self.process.process.wait(30)
        self.process.stop(grace=5)

    def remove(self, keep_log: pathlib.Path) -> None:
        """Its files, once stopped; its log is kept at `keep_log`."""
        with contextlib.suppress(OSError):
            keep_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.root / "postgres.log", keep_log)
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
