"""A throwaway PostgreSQL cluster for the tests."""

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

from pydantic import SecretStr

from services.common.ports import free_port
from services.common.settings import InternalAuthSettings


class PostgresCluster:
    """initdb + pg_ctl in a temp dir. As root, the binaries run as the postgres user
    (initdb refuses root)."""

    def __init__(self) -> None:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if not bindir or not pathlib.Path(bindir, "initdb").exists():
            raise RuntimeError("PostgreSQL server binaries not found (pg_config --bindir); install postgresql")
        self.bindir = pathlib.Path(bindir)
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="kiln-pg-"))
        self.port = free_port()
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._prefix, *args], check=True, capture_output=True, cwd=self.root)

    def start(self) -> PostgresCluster:
        data = self.root / "data"
        self._run(str(self.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")
        self.restart()
        return self

    def postmaster_pid(self) -> int:
        return int((self.root / "data" / "postmaster.pid").read_text().split()[0])

    def pause(self) -> list[int]:
        """SIGSTOP the server and every backend: it hangs as a frozen machine would. Returns what to resume."""
        pids = processes_of(self.postmaster_pid())
        signal_all(pids, signal.SIGSTOP)
        for pid in pids:
            wait_stopped(pid)
        return pids

    def kill(self) -> None:
        """kill -9 the whole server, as a crash would."""
        pids = processes_of(self.postmaster_pid())
        signal_all(pids, signal.SIGKILL)
        for pid in pids:
            _wait_gone(pid)
        # This machine's init may never reap the killed server, and PostgreSQL won't start while
        # the pid in its lock file names a live process, zombies included.
        (self.root / "data" / "postmaster.pid").unlink()
        (self.root / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def restart(self) -> None:
        """Start again on the same data and port (after `kill`: crash recovery runs)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-o", options, "-l",
                  str(self.root / "log"), "-w", "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


# The credential every test service and client shares, as Kiln's services do in production.
TEST_INTERNAL_TOKEN = "kiln-test-internal-token"
TEST_AUTH = InternalAuthSettings(token=SecretStr(TEST_INTERNAL_TOKEN))


def processes_of(root_pid: int) -> list[int]:
    """`root_pid` and every process below it (PostgreSQL's backends, say)."""
    found = [root_pid]
    for pid in found:
        children = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
        if children.exists():
            found.extend(int(child) for child in children.read_text().split())
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float = 10) -> None:
    """Until a killed process is gone (reaped by its parent or by init)."""
    deadline = time.monotonic() + timeout
    while pathlib.Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} outlived SIGKILL")
        time.sleep(0.01)  # the kernel says nothing when a process it was told to kill is gone


def wait_stopped(pid: int, timeout: float = 10) -> None:
    """Until a process sent SIGSTOP has stopped: the signal is only queued when kill() returns."""
    deadline = time.monotonic() + timeout
    while _state(pid) not in ("T", "t", "gone"):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop")
        time.sleep(0.005)  # the kernel says nothing when a process stops


def _state(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
