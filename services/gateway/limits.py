"""Per-key limits: a request rate (a token bucket: `rate` a second, bursts up to `burst`) and how
many training watch streams one key may hold open. Counted per gateway replica, so N replicas
admit up to N times these; a refused call gets RESOURCE_EXHAUSTED with a QuotaFailure naming the
key and the limit, and, for the rate, a RetryInfo saying when to try again."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from services.common.errors import quota_exceeded


def _nothing() -> None:
    pass


WATCH_METHODS = frozenset({"/kiln.v1.TrainerService/WatchTrainingJob"})


@dataclass
class _Bucket:
    tokens: float
    at: float


class KeyLimits:
    def __init__(self, rate: float, burst: int, max_watch_streams: int,
                 watch_methods: Collection[str] = WATCH_METHODS, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = burst
        self._max_watches = max_watch_streams
        self._watch_methods = frozenset(watch_methods)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._watching: dict[str, int] = {}

    def admit(self, key_id: str, method: str) -> Callable[[], None]:
        """Let a call in under the key's limits (a ServiceError when they refuse it); returns what
        to call once it has ended."""
        self._take_token(key_id)
        if method not in self._watch_methods:
            return _nothing
        if self._watching.get(key_id, 0) >= self._max_watches:
            raise quota_exceeded(
                f"this key already has {self._max_watches} training watch streams open; close one first",
                "WATCH_STREAMS_PER_KEY", subject=f"key:kiln_{key_id}", description="max_watch_streams_per_key",
                limit=str(self._max_watches))
        self._watching[key_id] = self._watching.get(key_id, 0) + 1

        def release() -> None:
            self._watching[key_id] -= 1
            if not self._watching[key_id]:
                del self._watching[key_id]

        return release

    def _take_token(self, key_id: str) -> None:
        now = self._clock()
        bucket = self._buckets.setdefault(key_id, _Bucket(float(self._burst), now))
        bucket.tokens = min(float(self._burst), bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        wait = (1.0 - bucket.tokens) / self._rate
        raise quota_exceeded(
            f"this key may make {self._rate:g} requests a second (bursts of {self._burst}); retry in {wait:.2f} s",
            "REQUEST_RATE_PER_KEY", subject=f"key:kiln_{key_id}", description="key_requests_per_second",
            retry_delay=wait, limit=f"{self._rate:g}")
