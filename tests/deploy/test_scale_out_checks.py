"""The proof's checks find what they look for: each is given a run that breaks its rule, and one
that keeps it."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from kiln.v1 import trainer_pb2 as tpb
from services.scaleout import checks
from services.scaleout.watchers import Watch
from services.scaleout.webhook_sink import Delivery

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
State = tpb.TrainingJob.State


def stamp(seconds: float) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(T0 + dt.timedelta(seconds=seconds))
    return value


def record(name: str, tenant: str, created: float, log: list[tuple[float, str]]) -> checks.JobRecord:
    events = []
    for seq, (at, kind) in enumerate(log, start=1):
        event = tpb.TrainingEvent(seq=seq, time=stamp(at))
        if kind == "started":
            event.started.CopyFrom(tpb.StartedEvent(worker="w", attempt=1))
        elif kind == "epoch":
            event.epoch_saved.epoch = 1
        elif kind == "requeued":
            event.requeued.reason = "its worker stopped reporting"
        else:
            event.finished.state = State.STATE_SUCCEEDED
        events.append(event)
    job = tpb.TrainingJob(name=f"trainingJobs/{name}", create_time=stamp(created), state=State.STATE_SUCCEEDED,
                          snapshot="datasets/d1/snapshots/" + "a" * 64, epochs=[tpb.EpochResult(epoch=1)])
    return checks.JobRecord(job, tenant, events)


def test_a_tenant_served_twice_while_another_waits_breaks_round_robin():
    a1 = record("a1", "a", 0, [(3, "started"), (9, "finished")])
    a2 = record("a2", "a", 1, [(4, "started"), (9, "finished")])
    b1 = record("b1", "b", 2, [(5, "started"), (9, "finished")])
    wrong = checks.queue_order_held([a1, a2, b1], max_running_per_tenant=2)
    assert len(wrong) == 1 and "trainingJobs/a2 (a) started; the queue's next was trainingJobs/b1 (b)" in wrong[0]
    fair = [a1, record("a2", "a", 1, [(5, "started"), (9, "finished")]),
            record("b1", "b", 2, [(4, "started"), (9, "finished")])]
    assert checks.queue_order_held(fair, max_running_per_tenant=2) == []


def test_a_start_past_the_running_limit_or_before_the_job_exists_is_wrong():
    a1 = record("a1", "a", 0, [(3, "started"), (9, "finished")])
    a2 = record("a2", "a", 1, [(4, "started"), (9, "finished")])
    over_the_limit = checks.queue_order_held([a1, a2], max_running_per_tenant=1)
    assert len(over_the_limit) == 1 and "nothing could start" in over_the_limit[0]
    early = record("b1", "b", 5, [(4, "started"), (9, "finished")])
    assert checks.queue_order_held([early], max_running_per_tenant=2)


def test_a_requeue_the_claim_itself_made_may_come_either_side_of_it():
    # a1's worker died; the claim at 5 s requeued it (logged a moment later) and may take it.
    a1 = record("a1", "a", 0, [(1, "started"), (5.01, "requeued"), (5, "started"), (9, "finished")])
    b1 = record("b1", "b", 2, [(3, "started"), (9, "finished")])
    assert checks.queue_order_held([a1, b1], max_running_per_tenant=1) == []


def test_a_later_job_of_a_tenant_starting_first_breaks_fifo():
    first = record("a1", "a", 0, [(5, "started"), (9, "finished")])
    second = record("a2", "a", 1, [(4, "started"), (9, "finished")])
    assert checks.fifo_within_tenants([first, second])
    assert checks.fifo_within_tenants([record("a1", "a", 0, [(4, "started"), (9, "finished")]), first]) == []


def test_objects_no_record_names_are_found():
    job = record("j1", "a", 0, [(1, "started"), (2, "finished")])
    keys = ["datasets/d1/images/i1/original", "datasets/d1/snapshots/" + "a" * 64 + ".json",
            "trainingJobs/j1/epochs/1/lora.safetensors"]
    assert checks.bucket_holds_only_named_objects(keys, {"d1": {"i1"}}, [job]) == []
    strays = ["datasets/d1/images/gone/original", "uploads/d1/u1", "trainingJobs/j2/epochs/1/lora.safetensors",
              "datasets/d1/snapshots/" + "b" * 64 + ".json", "trainingJobs/j1/epochs/2/lora.safetensors",
              "trainingJobs/j1/epochs/1/previews/0.png"]
    assert len(checks.bucket_holds_only_named_objects(keys + strays, {"d1": {"i1"}}, [job])) == len(strays)


def test_a_missing_webhook_is_wrong_and_a_repeated_id_is_only_counted():
    job = record("j1", "a", 0, [(1, "started"), (2, "epoch"), (3, "finished")])
    name = job.job.name
    told = [("evt_1", "training.queued", {}), ("evt_2", "training.started", {"attempt": 1}),
            ("evt_3", "training.epoch_saved", {"epoch": 1}), ("evt_4", "training.succeeded", {})]
    deliveries = [Delivery("a", webhook_id, {"type": kind, "data": {"name": name, **data}})
                  for webhook_id, kind, data in told]
    assert checks.webhooks_delivered_once_each([job], [*deliveries, deliveries[1]], []) == ([], 1)
    wrong, _ = checks.webhooks_delivered_once_each([job], deliveries[:3], [])
    assert wrong and "training.succeeded" in wrong[0]


def test_a_watcher_given_a_gap_or_a_repeat_is_wrong():
    job = record("j1", "a", 0, [(1, "started"), (2, "epoch"), (3, "finished")])
    whole = Watch(job.job.name, "a", events=list(job.log))
    assert checks.watchers_saw_every_event_once([whole], {job.job.name: job}) == []
    repeated = Watch(job.job.name, "a", events=[job.log[0], job.log[0], *job.log[1:]], out_of_order=[(2, 1)])
    assert len(checks.watchers_saw_every_event_once([repeated], {job.job.name: job})) == 2


def test_equal_events_are_equal_whatever_order_their_maps_were_filled_in():
    job = record("j1", "a", 0, [(1, "started"), (2, "epoch"), (3, "finished")])
    first, second = tpb.TrainingEvent(seq=2), tpb.TrainingEvent(seq=2)
    first.progress.learning_rates.update({"unet": 1e-4, "text_encoder": 5e-5})
    second.progress.learning_rates.update({"text_encoder": 5e-5, "unet": 1e-4})
    seen = Watch(job.job.name, "a", events=[job.log[0], first, job.log[2]])
    logged = checks.JobRecord(job.job, "a", [job.log[0], second, job.log[2]])
    assert checks.watchers_saw_every_event_once([seen], {job.job.name: logged}) == []
