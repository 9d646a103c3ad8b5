"""Key checks are remembered for a while (no database read per call) and last uses are batched."""

from __future__ import annotations

import datetime as dt

from services.gateway.api_keys import create_key, list_keys, revoke_key
from services.gateway.key_verifier import KeyVerifier
from services.gateway.server import open_database
from services.gateway.settings import GatewaySettings


def test_answers_are_remembered_for_the_cache_time_and_uses_are_written_in_a_batch(aio, tmp_path):
    transactions = open_database(GatewaySettings(data_dir=tmp_path))
    now = [0.0]
    verifier = KeyVerifier(transactions, cache_seconds=5.0, clock=lambda: now[0])
    at = dt.datetime.now(dt.UTC)
    with transactions.engine.begin() as conn:
        record, key = create_key(conn, "cached", "test", at)
    try:
        assert aio.run(verifier.verify(key)).tenant == "cached"
        with transactions.engine.begin() as conn:
            revoke_key(conn, record.id, at)
        assert aio.run(verifier.verify(key)) is not None  # remembered: within the cache time
        now[0] = 5.1
        assert aio.run(verifier.verify(key)) is None  # asked again: revoked
        with transactions.engine.connect() as conn:
            assert list_keys(conn, "cached")[0].last_use_time is None
        aio.run(verifier.record_uses())
        with transactions.engine.connect() as conn:
            assert list_keys(conn, "cached")[0].last_use_time is not None
    finally:
        transactions.close()
        transactions.engine.dispose()
