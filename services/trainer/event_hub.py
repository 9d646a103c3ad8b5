"""Wakes this replica's watchers when their job's log grew: a commit notifies, each watcher then
reads what it hasn't sent at its own pace (a slow one holds nobody up). Watchers of a job whose
worker reports to another replica learn of new events by polling, every `watch_poll_seconds`.

A subscriber registers before it reads, then clears and reads again after every wake-up, so a
notification landing between its read and its wait is never lost.

The hot path (a worker's progress reports) also publishes the events it committed: the hub keeps
the latest ones of each watched job in memory, so a hundred watchers woken by one step read it
there instead of each asking the database. Only a contiguous run of seqs is kept; a watcher
whose cursor is outside it reads the database, as every watcher of another replica does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence

from kiln.v1 import trainer_pb2 as pb

QUEUE = "\x00queue"  # the topic workers waiting in ClaimTrainingJob listen on
RECENT_EVENTS = 512


class EventHub:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Event]] = {}
        self._recent: dict[str, list[pb.TrainingEvent]] = {}

    def publish(self, job_id: str, events: Sequence[pb.TrainingEvent]) -> None:
        """Committed events of a job, in seq order: kept for its watchers, who are woken."""
        if events and job_id in self._subscribers:
            kept = self._recent.get(job_id)
            if kept and events[0].seq == kept[-1].seq + 1:
                kept.extend(events)
                del kept[:-RECENT_EVENTS]
            else:
                self._recent[job_id] = list(events)[-RECENT_EVENTS:]
        self.notify(job_id)

    def after(self, job_id: str, cursor: int) -> list[pb.TrainingEvent]:
        """The kept events after `cursor`, when they follow it without a gap; else none."""
        kept = self._recent.get(job_id)
        if not kept or kept[0].seq > cursor + 1:
            return []
        return [event for event in kept if event.seq > cursor]

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
                self._recent.pop(topic, None)


async def woken(event: asyncio.Event, timeout: float) -> bool:
    """Until `event` is set (True) or `timeout` seconds have passed; clears it for the next round."""
    set_ = False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
        set_ = True
    event.clear()
    return set_
