"""The SDK's verifier (kiln.webhooks.verify) against deliveries signed as the dispatcher signs them."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from kiln.webhooks import BadSignature, MissingHeaders, StaleTimestamp, WebhookVerificationError, verify
from services.trainer.webhooks import signing

BODY = json.dumps({"type": "training.succeeded", "timestamp": "2026-12-07T15:00:00.000Z",
                   "data": {"name": "trainingJobs/0123456789abcdef", "state": "SUCCEEDED"}}, separators=(",", ":"))


def signed(secrets: list[str], *, age: float = 0, body: str = BODY) -> dict[str, str]:
    at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
    return signing.headers(secrets, "evt_1", at, body)


def test_a_genuine_delivery_verifies_to_its_payload_whatever_the_header_case():
    secret = signing.new_secret()
    headers = {key.title(): value for key, value in signed([secret]).items()}
    assert verify(BODY.encode(), headers, secret) == json.loads(BODY)


def test_a_tampered_body_is_rejected():
    secret = signing.new_secret()
    tampered = BODY.replace("SUCCEEDED", "FAILED").encode()
    with pytest.raises(BadSignature):
        verify(tampered, signed([secret]), secret)


def test_another_secret_is_rejected_and_either_secret_of_a_rotation_is_accepted():
    old, new, stranger = signing.new_secret(), signing.new_secret(), signing.new_secret()
    with pytest.raises(BadSignature):
        verify(BODY.encode(), signed([old]), stranger)
    both = signed([new, old])
    assert verify(BODY.encode(), both, old) == verify(BODY.encode(), both, new) == json.loads(BODY)
    assert verify(BODY.encode(), signed([new]), [old, new])["type"] == "training.succeeded"
    with pytest.raises(BadSignature):
        verify(BODY.encode(), signed([new]), [old, stranger])


def test_a_replayed_delivery_past_the_tolerance_is_rejected():
    secret = signing.new_secret()
    old = signed([secret], age=600)
    with pytest.raises(StaleTimestamp, match="s ago, more than the 300 s allowed"):
        verify(BODY.encode(), old, secret)
    assert verify(BODY.encode(), old, secret, tolerance_seconds=900)["type"] == "training.succeeded"
    with pytest.raises(StaleTimestamp):
        verify(BODY.encode(), signed([secret], age=-600), secret)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_named(missing):
    secret = signing.new_secret()
    headers = {k: v for k, v in signed([secret]).items() if k != missing}
    with pytest.raises(MissingHeaders, match=missing) as caught:
        verify(BODY.encode(), headers, secret)
    assert isinstance(caught.value, WebhookVerificationError)


def test_a_timestamp_that_is_not_a_number_is_rejected():
    secret = signing.new_secret()
    with pytest.raises(MissingHeaders):
        verify(BODY.encode(), {**signed([secret]), "webhook-timestamp": "yesterday"}, secret)
