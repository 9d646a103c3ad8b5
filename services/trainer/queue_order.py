"""The order jobs leave the queue in, and when each is expected to finish.

First in, first out within a tenant; round-robin across tenants: a tenant's k-th waiting job
(counting its running ones first) goes in round k, and within a round the earlier submission
goes first. Twenty jobs of one tenant therefore hold another tenant's single job back by at most
one job per worker, and a tenant that already has a job running waits behind one that has none.
The positions users see and the order workers claim in are both this one list.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WaitingJob:
    id: str
    tenant: str
    enqueue_time: dt.datetime
    gpu_seconds: float


def queue_order(waiting: Sequence[WaitingJob], running_per_tenant: Mapping[str, int]) -> list[WaitingJob]:
    rounds: Counter[str] = Counter(running_per_tenant)
    keyed: list[tuple[int, dt.datetime, str, WaitingJob]] = []
    for job in sorted(waiting, key=lambda j: (j.enqueue_time, j.id)):
        keyed.append((rounds[job.tenant], job.enqueue_time, job.id, job))
        rounds[job.tenant] += 1
    keyed.sort(key=lambda item: item[:3])
    return [item[3] for item in keyed]


def finish_times(ordered: Sequence[WaitingJob], running_remaining: Sequence[float], workers: int) -> list[float]:
    """Seconds from now until each ordered job finishes, with `workers` taking jobs as they free
    up (running ones first, each with the seconds it has left)."""
    slots = max(1, workers, len(running_remaining))
    free = sorted(running_remaining) + [0.0] * (slots - len(running_remaining))
    heapq.heapify(free)
    finishes = []
    for job in ordered:
        start = heapq.heappop(free)
        end = start + job.gpu_seconds
        finishes.append(end)
        heapq.heappush(free, end)
    return finishes
