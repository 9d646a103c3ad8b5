"""Shared runtime pieces on their own: page tokens, malformed requests, fingerprints, embedded S3."""

from __future__ import annotations

import pytest
from google.protobuf import empty_pb2

from kiln.v1 import dataset_pb2 as pb
from services.common.embedded_s3 import EmbeddedS3
from services.common.errors import MalformedRequest, ServiceError
from services.common.idempotency import request_fingerprint
from services.common.malformed import tolerant
from services.common.objectstore import ObjectNotFound, ObjectStore
from services.common.pagination import PageTokens, page_size
from services.common.settings import ObjectStoreSettings


def test_page_tokens_round_trip_and_refuse_tampering():
    tokens = PageTokens("secret")
    token = tokens.encode(["2026-11-25T12:00:00", "abc"], "images:t:d:None")
    assert tokens.decode(token, "images:t:d:None") == ["2026-11-25T12:00:00", "abc"]
    assert tokens.decode("", "anything") is None
    for bad, query in [(token, "images:t:d:training"), (token[:-3], "images:t:d:None"), ("%%%", "q")]:
        with pytest.raises(ServiceError) as err:
            tokens.decode(bad, query)
        assert err.value.violations[0].field == "page_token"
    assert page_size(0, 20, 100) == 20 and page_size(500, 20, 100) == 100
    with pytest.raises(ServiceError):
        page_size(-1, 20, 100)


def test_malformed_request_names_the_bad_nested_field():
    raw = pb.UploadImageRequest(metadata=pb.UploadImageMetadata(parent="datasets/x", filename="ab.png",
                                                                tags=["ok", "cd"])).SerializeToString()
    parse = tolerant(pb.UploadImageRequest.FromString, pb.UploadImageRequest)
    assert parse(raw).metadata.filename == "ab.png"
    broken = parse(raw.replace(b"ab.png", b"a\xfe.png").replace(b"cd", b"\xc3("))
    assert isinstance(broken, MalformedRequest)
    assert set(broken.fields) == {"metadata.filename", "metadata.tags"}
    garbage = parse(b"\xff\xff\xff")
    assert isinstance(garbage, MalformedRequest) and garbage.fields == ()
    assert garbage.to_error().violations[0].reason == "MALFORMED"
    assert isinstance(tolerant(empty_pb2.Empty.FromString, empty_pb2.Empty)(b""), empty_pb2.Empty)


def test_fingerprint_ignores_only_the_request_id():
    a = pb.CreateDatasetRequest(dataset=pb.Dataset(display_name="x"), request_id="1")
    b = pb.CreateDatasetRequest(dataset=pb.Dataset(display_name="x"), request_id="2")
    c = pb.CreateDatasetRequest(dataset=pb.Dataset(display_name="y"), request_id="1")
    assert request_fingerprint(a) == request_fingerprint(b) != request_fingerprint(c)


def test_embedded_s3_persists_across_restarts(tmp_path):
    settings = ObjectStoreSettings(access_key="k", secret_key="secret-key-1", bucket="bkt")
    server = EmbeddedS3(tmp_path, settings.access_key, settings.secret_key.get_secret_value()).start()
    try:
        store = ObjectStore(settings, endpoint=server.endpoint)
        store.ensure_bucket()
        store.put_bytes("a/b", b"kept", "text/plain")
    finally:
        server.stop()
    server = EmbeddedS3(tmp_path, settings.access_key, settings.secret_key.get_secret_value()).start()
    try:
        store = ObjectStore(settings, endpoint=server.endpoint)
        assert store.get_bytes("a/b") == b"kept"
        with pytest.raises(ObjectNotFound):
            store.get_bytes("a/missing")
        wrong = ObjectStore(ObjectStoreSettings(access_key="k", secret_key="wrong", bucket="bkt"),
                            endpoint=server.endpoint)
        with pytest.raises(Exception, match=r"(?i)signature|denied|forbidden"):
            wrong.get_bytes("a/b")
    finally:
        server.stop()
