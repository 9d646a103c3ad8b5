"""Wakes this replica's watchers when their job's log grew: a commit notifies, each watcher then
reads what it hasn't sent at its own pace (a slow one holds nobody up). Watchers of a job whose
worker reports to another replica learn of new events by polling, every `watch_poll_seconds`.

A subscriber registers before it reads, then clears and reads again after every wake-up, so a
notification landing between its read and its wait is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

QUEUE = "\x00queue"  # the topic workers waiting in ClaimTrainingJob listen on


class EventHub:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Event]] = {}

    def notify(self, topic: str) -> None:
        for event in self._subscribers.get(topic, ()):
            event.set()

    @contextlib.contextmanager
    def subscribe(self, topic: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        subscribers = self._subscribers.setdefault(topic, set())
        subscribers.add(event)
        try:
            yield event
        finally:
            subscribers.discard(event)
            if not subscribers:
                self._subscribers.pop(topic, None)


async def woken(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` seconds have passed; clears it for the next round."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    event.clear()
