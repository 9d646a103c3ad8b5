"""Key checks are remembered for a while (no database read per call) and last uses are batched."""

from __future__ import annotations

import datetime as dt
import shutil

import grpc
import pytest

from services.common.errors import ServiceError
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


def test_keys_that_cant_be_read_are_an_outage_not_a_refusal(aio, tmp_path):
    data_dir = tmp_path / "gateway"
    transactions = open_database(GatewaySettings(data_dir=data_dir))
    verifier = KeyVerifier(transactions, cache_seconds=0)
    try:
        transactions.engine.dispose()
        shutil.rmtree(data_dir)  # the database file and its folder are gone: nothing can be read
        with pytest.raises(ServiceError) as failed:
            aio.run(verifier.verify("kiln_0123456789ab_secret"))
        assert (failed.value.code, failed.value.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    finally:
        transactions.close()
        transactions.engine.dispose()
