"""Following a training job: its events as they happen, resumed from the last seq seen when the
stream drops, and a progress bar that waits for the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from tqdm import tqdm

from kiln.errors import JobFailed, KilnError
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_pb2_grpc

State = pb.TrainingJob.State
FINAL_STATES = frozenset({State.STATE_SUCCEEDED, State.STATE_FAILED, State.STATE_CANCELLED})
# A dropped stream is reconnected at once, then with growing pauses; this many failed reconnects in
# a row (no event in between) give up.
MAX_RECONNECTS = 8
_FIRST_PAUSE, _MAX_PAUSE = 0.25, 5.0
# Failures a watch outlives: the connection or the gateway went away, or the stream was cut.
_RESUMABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                        grpc.StatusCode.CANCELLED})


@dataclass
class Reconnects:
    """How a watch waits before reconnecting (a seam for tests and callers)."""

    sleep: Callable[[float], None] = time.sleep
    limit: int = MAX_RECONNECTS


def watch_job(stub: trainer_pb2_grpc.TrainerServiceStub, name: str, after_seq: int = 0,
              reconnects: Reconnects | None = None) -> Iterator[pb.TrainingEvent]:
    """Every event after `after_seq` until the job's final one, each once and in order, across dropped
    streams."""
    policy = reconnects or Reconnects()
    last, failures = after_seq, 0
    while True:
        dropped: KilnError | None = None
        stream = stub.WatchTrainingJob(pb.WatchTrainingJobRequest(name=name, after_seq=last))
        try:
            for event in stream:
                if event.seq <= last:
                    continue
                last, failures = event.seq, 0
                yield event
                if event.HasField("finished"):
                    return
        except KilnError as error:
            if error.code not in _RESUMABLE:
                raise
            dropped = error
        finally:
            stream.cancel()
        if dropped is None:
            # Ended before the final event: a gateway stopping, or nothing after `last` of a job that is over.
            job = stub.GetTrainingJob(pb.GetTrainingJobRequest(name=name))
            if job.state in FINAL_STATES and job.last_event_seq <= last:
                return
        failures += 1
        if failures > policy.limit:
            gave_up = dropped or KilnError(grpc.StatusCode.UNAVAILABLE, f"the watch of {name} keeps ending early")
            gave_up.hint = (f"the gateway dropped the watch of {name} {failures} times in a row: watch again with "
                            f"after_seq={last} once it is back")
            raise gave_up
        policy.sleep(0.0 if failures == 1 else min(_MAX_PAUSE, _FIRST_PAUSE * 2 ** (failures - 2)))


def job_error(job: pb.TrainingJob) -> JobFailed:
    failed = KilnError.from_status(job.error)
    reason = failed.message or "the job failed without a reason"
    return JobFailed(failed.code if failed.code != grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN,
                     f"training job {job.name} failed: {reason}", failed.violations, failed.quota,
                     failed.retry_delay, failed.reason, failed.metadata,
                     hint="fix what the message names and retrain (kiln jobs retrain …) or create a new job",
                     job=job)


def describe_epoch(result: pb.EpochResult) -> str:
    extra = " (asked for)" if result.on_request else ""
    return (f"epoch {result.epoch} saved{extra} at step {result.step}: loss {result.loss:.4f}, "
            f"{result.lora.name} ({result.lora.size_bytes / 1024:.0f} KiB), {len(result.previews)} previews")


class ProgressBar:
    """A tqdm bar over a job's steps: loss and epoch in the postfix, saved epochs printed above it."""

    def __init__(self, name: str, enabled: bool = True) -> None:
        self._bar = tqdm(desc=name.rsplit("/", 1)[-1], unit="step", disable=not enabled)
        self._enabled = enabled

    def show(self, event: pb.TrainingEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind == "progress":
            progress = event.progress
            if progress.total_steps:
                self._bar.total = progress.total_steps
            self._bar.n = progress.step
            postfix = {"phase": progress.phase}
            if progress.total_epochs:
                postfix["epoch"] = f"{progress.epoch}/{progress.total_epochs}"
            if progress.step:
                postfix["loss"] = f"{progress.smoothed_loss or progress.loss:.4f}"
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.refresh()
        elif kind == "queued":
            self._bar.set_postfix_str(f"queued, position {event.queued.position}")
        elif kind == "started":
            self.say(f"started on {event.started.worker} (attempt {event.started.attempt})")
        elif kind == "epoch_saved":
            self.say(describe_epoch(event.epoch_saved))
        elif kind == "requeued":
            self.say(f"requeued: {event.requeued.reason}; resumes from epoch {event.requeued.resume_from_epoch}")
        elif kind == "log" and event.log.level >= pb.LogEvent.LEVEL_WARNING:
            self.say(event.log.message)
        elif kind == "finished":
            self.say(f"finished: {State.Name(event.finished.state).removeprefix('STATE_').lower()}")

    def say(self, text: str) -> None:
        if self._enabled:
            self._bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


def wait_for_job(stub: trainer_pb2_grpc.TrainerServiceStub, name: str, progress: bool = True,
                 reconnects: Reconnects | None = None) -> pb.TrainingJob:
    """Follows the job to its end; the job as it ended. A FAILED job raises JobFailed with its reason."""
    bar = ProgressBar(name, progress)
    try:
        for event in watch_job(stub, name, reconnects=reconnects):
            bar.show(event)
    finally:
        bar.close()
    job: pb.TrainingJob = stub.GetTrainingJob(pb.GetTrainingJobRequest(name=name))
    if job.state == State.STATE_FAILED:
        raise job_error(job)
    return job
