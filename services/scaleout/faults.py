"""The faults the proof injects while jobs run, each followed until the cluster has healed by
itself: a worker and a trainer-service replica killed with SIGKILL (and started again, as their
orchestrator would), a volume server of the object store restarted, and PostgreSQL stopped for a
few seconds."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kiln import Client
from kiln.errors import KilnError
from kiln.v1 import trainer_pb2 as tpb
from services.scaleout.cluster import Cluster
from services.scaleout.watchers import Watch
from services.stack import serving

POLL = 0.1
DATABASE_DOWN_SECONDS = 3.0


@dataclass(frozen=True)
class Fault:
    name: str
    detail: str
    # Seconds from the fault until the cluster had healed, and what "healed" meant.
    healed_after: float
    healed_when: str


class FaultTooLate(RuntimeError):
    """Every job was over before the fault could hit one mid-run."""


def until(condition: Callable[[], bool], deadline: float, what: str) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(POLL)  # polling the cluster's real state; no event tells this process


def _running(watches: Sequence[Watch]) -> list[Watch]:
    return [w for w in watches if w.current_worker()]


def _some_running(watches: Sequence[Watch], deadline: float, fault: str) -> list[Watch]:
    """The jobs running once at least one is (the fault must land mid-run)."""
    found: list[Watch] = []

    def running_now() -> bool:
        if all(w.finished() for w in watches):
            raise FaultTooLate(f"every job was over before the {fault}")
        found[:] = _running(watches)
        return bool(found)

    until(running_now, deadline, f"no job was running for the {fault}")
    return found


def _all_progressed(watches: Sequence[Watch], since: float) -> Callable[[], bool]:
    """Each job that was running has logged an event stamped after `since` (wall clock), or ended."""
    def check() -> bool:
        return all(w.finished() or (w.events and w.events[-1].time.ToDatetime(dt.UTC).timestamp() > since)
                   for w in watches)
    return check


def kill_worker_mid_run(cluster: Cluster, watches: Sequence[Watch], worker: str, timeout: float) -> Fault:
    deadline = time.monotonic() + timeout
    victim: list[Watch] = []

    def mid_run() -> bool:
        if all(w.finished() for w in watches):
            raise FaultTooLate(f"every job was over before {worker} had one mid-run")
        victim[:] = [w for w in watches if w.current_worker() == worker and w.saved_since_start()][:1]
        return bool(victim)

    until(mid_run, deadline, f"{worker} never had a job with an epoch saved")
    job = victim[0]
    attempts = sum(e.HasField("started") for e in job.events)
    start = time.monotonic()
    cluster.kill(worker)
    cluster.start_service(worker)
    until(lambda: sum(e.HasField("started") for e in job.events) > attempts or job.finished(), deadline,
           f"{job.job} was not taken over after {worker} died")
    return Fault("worker killed", f"kill -9 {worker} while it trained {job.job} past an epoch; restarted at once",
                 time.monotonic() - start, "its job started again on a worker, resuming from the saved epoch")


def kill_trainer_replica(cluster: Cluster, watches: Sequence[Watch], replica: str, timeout: float) -> Fault:
    deadline = time.monotonic() + timeout
    running = _some_running(watches, deadline, "trainer replica kill")
    start, wall = time.monotonic(), time.time()
    cluster.kill(replica)
    cluster.start_service(replica)
    until(lambda: serving(cluster.services[replica].address), deadline, f"{replica} did not serve again")
    back = time.monotonic() - start
    until(_all_progressed(running, wall), deadline, "the running jobs logged nothing after the replica died")
    return Fault("trainer replica killed", f"kill -9 {replica} with {len(running)} jobs running; restarted at once "
                 f"(serving again after {back:.1f} s)", time.monotonic() - start,
                 "every job running at the kill had logged a new event")


def restart_volume_server(cluster: Cluster, watches: Sequence[Watch], volume: str, timeout: float) -> Fault:
    deadline = time.monotonic() + timeout
    running = _some_running(watches, deadline, "volume server restart")
    start, wall = time.monotonic(), time.time()
    process = cluster.store.processes[volume]
    cluster.kill_process(process)
    cluster.store.start_part(volume)
    until(cluster.store.writable, deadline, "the store took no writes after the volume server came back")
    writable = time.monotonic() - start
    until(_all_progressed(running, wall), deadline, "the running jobs logged nothing after the restart")
    return Fault("volume server restarted", f"kill -9 {volume} and start it again with {len(running)} jobs running "
                 f"(the store took writes again after {writable:.1f} s)", time.monotonic() - start,
                 "every job running at the restart had logged a new event")


def stop_database(cluster: Cluster, watches: Sequence[Watch], client: Client, probe: str, timeout: float) -> Fault:
    """`probe`: a job `client` may read, asked for until the API answers again."""
    deadline = time.monotonic() + timeout
    running = _some_running(watches, deadline, "database outage")
    cluster.postgres.stop()
    stopped = time.monotonic()
    time.sleep(DATABASE_DOWN_SECONDS)  # the outage itself: how long the database stays away
    cluster.postgres.start()
    start, wall = time.monotonic(), time.time()

    def answers() -> bool:
        try:
            client.trainer.GetTrainingJob(tpb.GetTrainingJobRequest(name=probe), timeout=5)
        except KilnError:
            return False
        return True

    until(answers, deadline, "the gateway did not answer after the database came back")
    answering = time.monotonic() - start
    until(_all_progressed(running, wall), deadline, "the running jobs logged nothing after the database came back")
    return Fault("database stopped", f"PostgreSQL stopped (fast shutdown) for {start - stopped:.1f} s with "
                 f"{len(running)} jobs running (API answering {answering:.1f} s after it came back)",
                 time.monotonic() - start, "every job running at the outage had logged a new event (counted from "
                 "the database's return)")
