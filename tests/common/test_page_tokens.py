"""Page tokens are signed and strictly shaped: a client can only hand back a key the service issued."""

from __future__ import annotations

import base64
import json

import pytest

from services.common.errors import ServiceError
from services.common.pagination import PageTokens, filter_digest

QUERY = "images:t:d:None"
TOKENS = PageTokens("a secret every replica shares")


def unsigned(payload: object) -> str:
    """What the service issued before tokens were signed: base64 of the JSON, nothing else."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def refused(token: str, query: str = QUERY, length: int | None = None) -> ServiceError:
    with pytest.raises(ServiceError) as err:
        TOKENS.decode(token, query) if length is None else TOKENS.decode(token, query, length)
    assert err.value.code.name == "INVALID_ARGUMENT"
    assert [v.field for v in err.value.violations] == ["page_token"]
    return err.value


def test_a_token_round_trips():
    key = ["2026-11-25T12:00:00", "abc"]
    assert TOKENS.decode(TOKENS.encode(key, QUERY), QUERY, length=2) == key
    assert TOKENS.decode(TOKENS.encode(["builtin"], "taggers"), "taggers") == ["builtin"]


@pytest.mark.parametrize("key", [
    ["2026-11-25T12:00:00+00:00", "abc"],
    [["2026-11-25T12:00:00"], "abc"],
    ["2026-11-25T12:00:00", {"a": 1}],
    ["2026-11-25T12:00:00", [1, 2]],
])
def test_a_forged_token_is_refused(key):
    # The filter digest was never secret: anyone could build these before tokens were signed.
    refused(unsigned({"k": key, "f": filter_digest(QUERY)}))


def test_a_tampered_signature_or_payload_is_refused():
    token = TOKENS.encode(["2026-11-25T12:00:00", "abc"], QUERY)
    payload, signature = token.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    refused(f"{payload}.{flipped}{signature[1:]}")
    other = TOKENS.encode(["2026-11-25T12:00:00", "zzz"], QUERY).split(".")[0]
    refused(f"{other}.{signature}")
    refused(f"{payload}.{signature}.{signature}")
    refused(payload)


@pytest.mark.parametrize("key", [
    {"a": 1}, [], ["2026-11-25T12:00:00"], ["2026-11-25T12:00:00", "abc", "extra"],
    ["2026-11-25T12:00:00", {"a": 1}], ["2026-11-25T12:00:00", [1, 2]], [None, "abc"], [1.5, "abc"], [True, "x"],
])
def test_a_signed_key_of_the_wrong_shape_is_refused(key):
    # Signed by the service itself, as a bug or an older version might: the shape is still checked.
    refused(TOKENS.encode(key, QUERY), length=2)  # type: ignore[arg-type]


def test_a_token_of_another_query_is_refused():
    err = refused(TOKENS.encode(["2026-11-25T12:00:00", "abc"], QUERY), "images:t:d:training")
    assert "different query" in err.violations[0].description


def test_a_token_signed_with_another_secret_is_refused():
    # Another deployment, or a replica configured with a different secret.
    refused(PageTokens("another secret").encode(["2026-11-25T12:00:00", "abc"], QUERY))


def test_a_secret_is_required():
    with pytest.raises(ValueError, match="secret"):
        PageTokens("")


@pytest.mark.parametrize("token", ["garbage!", "%%%", "a.b", "....", "\u00e9t\u00e9.x", "x" * 100_000])
def test_garbage_is_refused(token):
    refused(token)
