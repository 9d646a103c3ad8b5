"""Watchers of training jobs through the gateway that say what the server sent them: every event in
the order it came, and each reconnect. A watcher reconnects with the last seq it saw, as a client
should; the events it gets must then continue exactly after that seq, never skip, never repeat."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from kiln import Client
from kiln.errors import KilnError
from kiln.v1 import trainer_pb2 as tpb

_RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
              grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class Watch:
    job: str
    tenant: str
    events: list[tpb.TrainingEvent] = field(default_factory=list)
    reconnects: int = 0
    # Why each stream ended before the job's final event: a status code, or "ended" (closed cleanly).
    breaks: collections.Counter[str] = field(default_factory=collections.Counter)
    # Events that did not follow the last one seen: (seq expected, seq received).
    out_of_order: list[tuple[int, int]] = field(default_factory=list)
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    _stream: Any = None

    def stop(self) -> None:
        """Ends the watch now (the proof is being interrupted)."""
        self.stopped.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def finished(self) -> bool:
        return bool(self.events) and self.events[-1].HasField("finished")

    def current_worker(self) -> str:
        """The worker of the latest attempt while the job runs ("" when waiting or over)."""
        worker = ""
        for event in self.events:
            if event.HasField("started"):
                worker = event.started.worker
            elif event.HasField("requeued") or event.HasField("finished"):
                worker = ""
        return worker

    def saved_since_start(self) -> bool:
        """An epoch saved in the running attempt: killing its worker now interrupts it mid-run."""
        saved = False
        for event in self.events:
            if event.HasField("started"):
                saved = False
            elif event.HasField("epoch_saved"):
                saved = True
        return saved and not self.finished()


def follow(client: Client, watch: Watch, deadline: float) -> None:
    """Until the job's final event (or `deadline`), reconnecting whenever the stream breaks."""
    failures, seen = 0, watch.last_seq
    try:
        while not watch.finished() and not watch.stopped.is_set():
            if time.monotonic() > deadline:
                watch.error = f"not over by the deadline (last seq {watch.last_seq})"
                return
            stream = watch._stream = client.trainer.WatchTrainingJob(
                tpb.WatchTrainingJobRequest(name=watch.job, after_seq=watch.last_seq))
            try:
                for event in stream:
                    if event.seq != watch.last_seq + 1:
                        watch.out_of_order.append((watch.last_seq + 1, event.seq))
                    watch.events.append(event)
                    if event.HasField("finished"):
                        break
            except KilnError as error:
                if error.code not in _RESUMABLE:
                    watch.error = f"{error.code.name}: {error}"
                    return
                watch.breaks[f"{error.code.name}: {str(error)[:80]}"] += 1
            else:
                if not watch.finished():
                    watch.breaks["ended"] += 1
            finally:
                stream.cancel()
            if not watch.finished() and not watch.stopped.is_set():
                watch.reconnects += 1
                failures = failures + 1 if watch.last_seq == seen else 1
                seen = watch.last_seq
                # A pause before reconnecting, growing while nothing comes through, as clients take.
                watch.stopped.wait(min(2.0, 0.2 * 2 ** (failures - 1)))
    finally:
        watch.done.set()
