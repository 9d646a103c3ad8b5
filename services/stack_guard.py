"""`python -m services.stack_guard [GRACE_SECONDS]`: ends the local stack's processes if the stack itself dies.

The stack tells it, on its stdin, the process group of each process it starts (`group <pgid>`)
and, once it has stopped them all itself, `done`. Should its stdin close before `done` (the
stack was killed, even with SIGKILL), it sends SIGTERM to every group, and SIGKILL to what is
still there after the grace period: a service stuck on a dependency that is already gone can't
outlive the stack. It runs in its own session, so a Ctrl-C in the terminal doesn't reach it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

GRACE_SECONDS = 10.0


def _running_groups() -> set[int]:
    """Process groups with a process that hasn't ended (a zombie has: nobody may reap an orphan here)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                state, _, group = stat.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z":
            found.add(int(group))
    return found


def end_groups(groups: list[int], grace: float) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while set(groups) & _running_groups() and time.monotonic() < deadline:
        time.sleep(0.1)  # these processes aren't our children: nothing tells us when they end
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    grace = float(args[0]) if args else GRACE_SECONDS
    groups: list[int] = []
    for line in sys.stdin:
        words = line.split()
        if words == ["done"]:
            return 0
        if len(words) == 2 and words[0] == "group" and words[1].isdigit():
            groups.append(int(words[1]))
    end_groups(groups, grace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
