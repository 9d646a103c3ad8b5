"""Page tokens are signed and strictly shaped: a client can only hand back a key the service issued."""

from __future__ import annotations

import base64
import json

import pytest

from services.common.errors import ServiceError
from services.common.pagination import _filter_digest, decode_token, encode_token

QUERY = "images:t:d:None"


def unsigned(payload: object) -> str:
    """What the service issued before tokens were signed: base64 of the JSON, nothing else."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def refused(token: str, query: str = QUERY, length: int | None = None) -> ServiceError:
    with pytest.raises(ServiceError) as err:
        decode_token(token, query) if length is None else decode_token(token, query, length)
    assert err.value.code.name == "INVALID_ARGUMENT"
    assert [v.field for v in err.value.violations] == ["page_token"]
    return err.value


def test_a_token_round_trips():
    key = ["2026-11-25T12:00:00", "abc"]
    assert decode_token(encode_token(key, QUERY), QUERY, length=2) == key
    assert decode_token(encode_token(["builtin"], "taggers"), "taggers") == ["builtin"]


@pytest.mark.parametrize("key", [
    ["2026-11-25T12:00:00+00:00", "abc"],
    [["2026-11-25T12:00:00"], "abc"],
    ["2026-11-25T12:00:00", {"a": 1}],
    ["2026-11-25T12:00:00", [1, 2]],
])
def test_a_forged_token_is_refused(key):
    # The filter digest was never secret: anyone could build these before tokens were signed.
    refused(unsigned({"k": key, "f": _filter_digest(QUERY)}))


def test_a_tampered_signature_or_payload_is_refused():
    token = encode_token(["2026-11-25T12:00:00", "abc"], QUERY)
    payload, signature = token.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    refused(f"{payload}.{flipped}{signature[1:]}")
    other = encode_token(["2026-11-25T12:00:00", "zzz"], QUERY).split(".")[0]
    refused(f"{other}.{signature}")
    refused(f"{payload}.{signature}.{signature}")
    refused(payload)


@pytest.mark.parametrize("key", [
    {"a": 1}, [], ["2026-11-25T12:00:00"], ["2026-11-25T12:00:00", "abc", "extra"],
    ["2026-11-25T12:00:00", {"a": 1}], ["2026-11-25T12:00:00", [1, 2]], [None, "abc"], [1.5, "abc"], [True, "x"],
])
def test_a_signed_key_of_the_wrong_shape_is_refused(key):
    # Signed by the service itself, as a bug or an older version might: the shape is still checked.
    refused(encode_token(key, QUERY), length=2)  # type: ignore[arg-type]


def test_a_token_of_another_query_is_refused():
    err = refused(encode_token(["2026-11-25T12:00:00", "abc"], QUERY), "images:t:d:training")
    assert "different query" in err.violations[0].description


@pytest.mark.parametrize("token", ["garbage!", "%%%", "a.b", "....", "\u00e9t\u00e9.x", "x" * 100_000])
def test_garbage_is_refused(token):
    refused(token)
