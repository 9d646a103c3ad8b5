"""Keys checked on every call without a database read on every call: answers are remembered for
`cache_seconds` (so a revoked key is refused everywhere within that), and when each key was last
used is written in one batch per round, not per call."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy.engine import Connection

from services.common.errors import as_service_error
from services.common.transactions import Transactions
from services.gateway.api_keys import Verified, record_use, verify_key


class KeyVerifier:
    def __init__(self, transactions: Transactions, cache_seconds: float, max_cached: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._tx = transactions
        self._cache_seconds = cache_seconds
        self._max_cached = max_cached
        self._clock = clock
        # sha256(presented key) -> (answer, until). Refusals apart, so a flood of wrong keys (a
        # client misconfigured in a loop, or guessing) can't push the live keys out.
        self._answers: OrderedDict[bytes, tuple[Verified | None, float]] = OrderedDict()
        self._refusals: OrderedDict[bytes, tuple[Verified | None, float]] = OrderedDict()
        self._used: dict[str, dt.datetime] = {}

    async def verify(self, presented: str) -> Verified | None:
        """The key's tenant and id, or None when it is no live key; a ServiceError (UNAVAILABLE, or
        INTERNAL, logged) when the keys can't be read."""
        digest = hashlib.sha256(presented.encode()).digest()
        now = self._clock()
        remembered = self._answers.get(digest) or self._refusals.get(digest)
        if remembered is not None and remembered[1] > now:
            verified = remembered[0]
        else:
            try:
                verified = await self._tx.run(lambda conn: verify_key(conn, presented), read_only=True)
            except Exception as error:
                raise as_service_error(error, "the API key check") from error
            self._answers.pop(digest, None)
            self._refusals.pop(digest, None)
            answers = self._answers if verified is not None else self._refusals
            answers[digest] = (verified, now + self._cache_seconds)
            answers.move_to_end(digest)
            while len(answers) > self._max_cached:
                answers.popitem(last=False)
        if verified is not None:
            self._used[verified.key_id] = dt.datetime.now(dt.UTC)
        return verified

    def forget(self) -> None:
        """Drop every remembered answer (this replica revoked a key: refuse it at once)."""
        self._answers.clear()
        self._refusals.clear()

    async def record_uses(self) -> None:
        """Write when each key used since the last round was last used."""
        used, self._used = self._used, {}
        if not used:
            return

        def write(conn: Connection) -> None:
            for key_id, at in used.items():
                record_use(conn, key_id, at)

        await self._tx.run(write)
