"""The life of a service process: serve until SIGTERM or SIGINT, then exit within the grace
period whatever the service's dependencies do.

A thread blocked on a hung database or object store can't be interrupted, and both asyncio
(its default executor) and the interpreter (concurrent.futures) wait for such threads on the
way out. So the process never waits for them: a watchdog ends it at the grace deadline, and a
shutdown that finished earlier ends it at once, logs flushed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from services.common.errors import ConfigurationError

log = logging.getLogger(__name__)


def serve_process(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]], grace: float) -> None:
    """Run `main(stop)`; `stop` is set on SIGTERM/SIGINT, and `main` then shuts down and returns.
    Does not return: the process exits."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            return
        log.info("termination signal received", extra={"fields": {"grace_seconds": grace}})
        stop.set()
        watchdog = threading.Timer(grace, _exit, args=(1, "shutdown outlived the grace period; exiting anyway"))
        watchdog.daemon = True
        watchdog.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    code = 0
    try:
        loop.run_until_complete(main(stop))
    except ConfigurationError as exc:
        log.error(f"cannot start: {exc}")
        code = 2
    except Exception:
        log.exception("service failed")
        code = 1
    finally:
        # Not loop.shutdown_default_executor(): it would wait for threads stuck on a dependency.
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    _exit(code, "stopped")


def _exit(code: int, message: str) -> None:
    log.info(message)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def drain_time(grace: float) -> float:
    """Of a grace period, the part in-flight calls get: the rest is for closing down."""
    return max(0.0, grace - min(2.0, grace / 4))
