"""What must hold once the proof's jobs are over; each check returns what it found wrong (empty:
it holds)."""

from __future__ import annotations

import collections
import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.v1 import trainer_pb2 as tpb
from services.scaleout.watchers import Watch
from services.scaleout.webhook_sink import Delivery

State = tpb.TrainingJob.State
# A claim requeues the jobs whose leases ran out in its own transaction, a moment after it read the
# clock: a requeue this soon after a start counts as before it.
_SAME_TRANSACTION = dt.timedelta(seconds=1)


@dataclass(frozen=True)
class JobRecord:
    """A finished job as the API tells it, and its whole event log read again at the end."""

    job: tpb.TrainingJob
    tenant: str
    log: list[tpb.TrainingEvent]


def exactly_once(records: Sequence[JobRecord], epochs: int) -> list[str]:
    wrong = []
    for record in records:
        finished = [e for e in record.log if e.HasField("finished")]
        if record.job.state != State.STATE_SUCCEEDED:
            wrong.append(f"{record.job.name} ended {State.Name(record.job.state)}")
        if len(finished) != 1:
            wrong.append(f"{record.job.name} logged {len(finished)} final events")
        if [e.epoch for e in record.job.epochs] != list(range(1, epochs + 1)):
            wrong.append(f"{record.job.name} kept epochs {[e.epoch for e in record.job.epochs]}")
    return wrong


def watchers_saw_every_event_once(watches: Sequence[Watch], records: Mapping[str, JobRecord]) -> list[str]:
    wrong = []
    for watch in watches:
        log = records[watch.job].log
        if watch.error:
            wrong.append(f"the watcher of {watch.job}: {watch.error}")
        if watch.out_of_order:
            wrong.append(f"the watcher of {watch.job} got seqs out of order (expected, got): {watch.out_of_order[:5]}")
        # Compared as messages: their bytes may differ for equal events (a map's entries are
        # serialized in no fixed order).
        if list(watch.events) != list(log):
            differ = next((i for i, (a, b) in enumerate(zip(watch.events, log, strict=False)) if a != b), None)
            detail = "" if differ is None else (f"; first difference at seq {log[differ].seq}: saw "
                                                f"{_brief(watch.events[differ])}, logged {_brief(log[differ])}")
            wrong.append(f"the watcher of {watch.job} saw {len(watch.events)} events, the log has {len(log)}{detail}")
        if [e.seq for e in log] != list(range(1, len(log) + 1)):
            wrong.append(f"the log of {watch.job} has gaps")
    return wrong


def _brief(event: tpb.TrainingEvent) -> str:
    return " ".join(str(event).split())[:300]


def expected_webhooks(record: JobRecord) -> list[tuple[str, ...]]:
    name = record.job.name
    expected: list[tuple[str, ...]] = [("training.queued", name, "")]
    for event in record.log:
        if event.HasField("started"):
            expected.append(("training.started", name, str(event.started.attempt)))
        elif event.HasField("epoch_saved"):
            expected.append(("training.epoch_saved", name, str(event.epoch_saved.epoch)))
        elif event.HasField("finished"):
            expected.append((f"training.{State.Name(event.finished.state).removeprefix('STATE_').lower()}", name, ""))
    return expected


def _told(payload: Mapping[str, Any]) -> tuple[str, ...]:
    data = payload.get("data", {})
    detail = data.get("attempt", data.get("epoch", "")) if payload.get("type") != "training.queued" else ""
    return (str(payload.get("type")), str(data.get("name")), str(detail))


def webhooks_delivered_once_each(records: Sequence[JobRecord], deliveries: Iterable[Delivery],
                                 rejected: Sequence[str]) -> tuple[list[str], int]:
    """(what is wrong, how many deliveries repeated an id already received)."""
    wrong = [f"a delivery was refused by the receiver: {reason}" for reason in rejected[:5]]
    by_endpoint: dict[str, dict[str, list[Delivery]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for delivery in deliveries:
        by_endpoint[delivery.endpoint][delivery.webhook_id].append(delivery)
    repeats = 0
    for tenant in sorted({r.tenant for r in records}):
        ids = by_endpoint.get(tenant, {})
        repeats += sum(len(copies) - 1 for copies in ids.values())
        for webhook_id, copies in ids.items():
            if any(copy.event != copies[0].event for copy in copies):
                wrong.append(f"{tenant}: deliveries of {webhook_id} differ")
        received = collections.Counter(_told(copies[0].event) for copies in ids.values())
        expected = collections.Counter(e for r in records if r.tenant == tenant for e in expected_webhooks(r))
        if received != expected:
            missing, extra = expected - received, received - expected
            wrong.append(f"{tenant}: missing {sorted(missing.elements())[:4]}, extra {sorted(extra.elements())[:4]}")
    return wrong, repeats


def queue_order_held(records: Sequence[JobRecord], max_running_per_tenant: int) -> list[str]:
    """Replays the log against the queue's promise, stated here on its own: a free worker takes the
    oldest waiting job of the tenant with the fewest jobs running (ties: the tenant whose oldest
    waiting job is older), skipping tenants at their running limit."""
    timeline: list[tuple[dt.datetime, int, str, str]] = []
    created = {r.job.name: r.job.create_time.ToDatetime(dt.UTC) for r in records}
    tenant_of = {r.job.name: r.tenant for r in records}
    for record in records:
        for event in record.log:
            kind = event.WhichOneof("kind")
            if kind in ("started", "requeued", "finished"):
                # Ends before starts at one instant: a worker's job ends before it claims the next.
                timeline.append((event.time.ToDatetime(dt.UTC), 1 if kind == "started" else 0, str(kind),
                                 record.job.name))
    timeline.sort()
    running: set[str] = set()
    over: set[str] = set()
    wrong = []

    def next_job(at: dt.datetime, running_then: set[str]) -> str | None:
        busy = collections.Counter(tenant_of[j] for j in running_then)
        oldest: dict[str, str] = {}
        for job in sorted((j for j in created if j not in running_then and j not in over and created[j] <= at),
                          key=lambda j: (created[j], j)):
            oldest.setdefault(tenant_of[job], job)
        candidates = [(busy[t], created[j], j) for t, j in oldest.items() if busy[t] < max_running_per_tenant]
        return min(candidates)[2] if candidates else None

    for at, _, what, job in timeline:
        if what != "started":
            running.discard(job)
            if what == "finished":
                over.add(job)
            continue
        # A requeue logged just after this start may have been made by this very claim (it
        # requeues the jobs whose leases ran out before it picks): either order is the truth.
        soon = {j for t, _, w, j in timeline if w == "requeued" and at < t <= at + _SAME_TRANSACTION}
        expected = {next_job(at, running), next_job(at, running - soon)}
        if job not in expected:
            named = ", ".join(sorted(f"{j} ({tenant_of[j]})" for j in expected if j)) or "none (nothing could start)"
            wrong.append(f"at {at:%H:%M:%S.%f} {job} ({tenant_of[job]}) started; the queue's next was {named}")
        running.add(job)
    return wrong


def fifo_within_tenants(records: Sequence[JobRecord]) -> list[str]:
    wrong = []
    for tenant in sorted({r.tenant for r in records}):
        own = [r for r in records if r.tenant == tenant]
        by_creation = [r.job.name for r in sorted(own, key=lambda r: r.job.create_time.ToDatetime())]
        by_start = [r.job.name for r in sorted(own, key=lambda r: _first_start(r))]
        if by_creation != by_start:
            wrong.append(f"{tenant}: created {by_creation}, first started {by_start}")
    return wrong


def _first_start(record: JobRecord) -> dt.datetime:
    return next(e.time.ToDatetime(dt.UTC) for e in record.log if e.HasField("started"))


_DATASET_KEY = re.compile(r"^datasets/([^/]+)/(?:images/([^/]+)/|snapshots/([0-9a-f]{64})\.json$)")
_JOB_KEY = re.compile(r"^trainingJobs/([^/]+)/(.+)$")


def _job_keys(job: tpb.TrainingJob) -> set[str]:
    """The objects a job's record accounts for: its settings, and for each epoch it lists the LoRA,
    the checkpoint it resumes from, and the previews with their record and sheet."""
    keys = {"config.json", "plan.json"}
    for epoch in job.epochs:
        folder = f"epochs/{epoch.epoch}/"
        keys |= {f"{folder}{name}" for name in ("lora.safetensors", "checkpoint.pt", "previews.json",
                                                  "contact_sheet.png")}
        keys |= {f"{folder}previews/{index}.png" for index in range(len(epoch.previews))}
    return keys


def bucket_holds_only_named_objects(keys: Iterable[str], images: Mapping[str, set[str]],
                                    records: Sequence[JobRecord]) -> list[str]:
    """Every object belongs to a record the API shows: an image of a dataset, the snapshot a job
    trained on, or a file of a job's saved epochs."""
    snapshots = {r.job.snapshot for r in records}
    jobs = {r.job.name.removeprefix("trainingJobs/"): _job_keys(r.job) for r in records}
    wrong = []
    for key in keys:
        dataset = _DATASET_KEY.match(key)
        job = _JOB_KEY.match(key)
        if dataset is not None:
            dataset_id, image_id, snapshot = dataset.groups()
            if image_id is not None and image_id not in images.get(dataset_id, set()):
                wrong.append(f"{key}: no such image")
            if snapshot is not None and f"datasets/{dataset_id}/snapshots/{snapshot}" not in snapshots:
                wrong.append(f"{key}: no job trained on this snapshot")
        elif job is not None:
            if job.group(1) not in jobs:
                wrong.append(f"{key}: no such training job")
            elif job.group(2) not in jobs[job.group(1)]:
                wrong.append(f"{key}: not a file of the job's saved epochs")
        else:
            wrong.append(f"{key}: named by no record")
    return wrong
