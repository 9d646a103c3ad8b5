"""The processes of a local stack: each in its own session (a Ctrl-C in the terminal reaches
only the stack, which stops them in order), each told by the kernel to stop when the stack dies
(so even a stack killed with SIGKILL leaves nothing behind), each logging to its own file."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pathlib
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with(parent_pid: int) -> Callable[[], None]:
    """Run in the child between fork and exec: SIGTERM when the parent dies."""

    def prepare() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        # The parent may have died before the line above took effect: then nobody tells us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return prepare


class ManagedProcess:
    """One child process of the stack, watched: `on_exit` is called (from a watcher thread) when
    it ends, whoever ended it."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: pathlib.Path,
                 on_exit: Callable[[ManagedProcess], None], cwd: pathlib.Path | None = None,
                 stdout: int | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self.stopping = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            # The parent dying is tracked per thread: the child must be started by the thread that
            # outlives it (the stack's), or it would be told to stop when a short-lived thread ends.
            self.process = subprocess.Popen(
                list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else log_file, stderr=log_file,
                start_new_session=True, preexec_fn=_die_with(os.getpid()))
        self._watcher = threading.Thread(target=self._watch, args=(on_exit,), name=f"watch-{name}", daemon=True)
        self._watcher.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def _watch(self, on_exit: Callable[[ManagedProcess], None]) -> None:
        self.process.wait()
        on_exit(self)

    def stop(self, grace: float) -> int:
        """SIGTERM, then after `grace` seconds SIGKILL to its whole process group (what it started
        went there too); returns its exit code."""
        self.stopping = True
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", self.name, grace)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Anything it left in its group (a child it could not stop) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._watcher.join()
        return self.process.returncode

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
