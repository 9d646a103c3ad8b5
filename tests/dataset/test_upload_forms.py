"""Browser uploads: CreateImageUpload's signed POST form, which the object store itself enforces
(the real SeaweedFS here), and FinalizeImageUpload.

A presigned PUT URL took any body for as long as it lived; the form admits one object, at one
key, of exactly the declared size, until it expires, and the store refuses everything else."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator

import grpc
import pytest

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common import object_keys
from services.common.internal_client import internal_channel
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings
from services.dataset import names
from services.dataset.server import DatasetService, running_dataset_service
from tests.common.waiting import wait_until
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import failure, image_bytes, new_dataset
from tests.dataset.helpers import upload as stream_upload
from tests.dataset.test_uploads import read_back
from tests.dataset.upload_form import post_form, s3_error, sent
from tests.servers import TEST_AUTH

# Short enough to wait for, and long enough that a form sent twice and finalized in between is used
# well before it expires even on a busy machine (those steps take well under a second when idle).
SHORT_TTL_SECONDS = 15


def staging_key(upload: pb.ImageUpload) -> str:
    return object_keys.staging_key(*names.parse_upload(upload.name))


def create_upload(stub: dataset_pb2_grpc.DatasetServiceStub, dataset: pb.Dataset, size: int,
                  **fields: object) -> pb.ImageUpload:
    return stub.CreateImageUpload(pb.CreateImageUploadRequest(
        parent=dataset.name, role=pb.IMAGE_ROLE_TRAINING, filename="browser.png", size_bytes=size,
        **fields))  # type: ignore[arg-type]


def finalize(stub: dataset_pb2_grpc.DatasetServiceStub, upload: pb.ImageUpload) -> pb.Image:
    return stub.FinalizeImageUpload(pb.FinalizeImageUploadRequest(name=upload.name))


@pytest.fixture
def dataset(stub: dataset_pb2_grpc.DatasetServiceStub) -> pb.Dataset:
    return new_dataset(stub)


def test_the_form_is_a_post_policy_for_one_key_and_the_declared_size(stub, dataset):
    upload = create_upload(stub, dataset, 1000)
    assert upload.upload_url.endswith("/kiln-test")  # the bucket: the key travels in the form
    assert upload.upload_fields["key"] == staging_key(upload)
    policy = json.loads(base64.b64decode(upload.upload_fields["policy"]))
    assert ["eq", "$key", staging_key(upload)] in policy["conditions"]
    assert ["content-length-range", 1000, 1000] in policy["conditions"]
    expiration = dt.datetime.fromisoformat(policy["expiration"])
    assert abs(expiration - upload.expire_time.ToDatetime(dt.UTC)) < dt.timedelta(milliseconds=1)
    # Minutes, not an hour: the default lifetime.
    lifetime = upload.expire_time.ToDatetime(dt.UTC) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=14) < lifetime <= dt.timedelta(minutes=15)


def test_bytes_sent_with_the_form_are_filed_by_finalize_which_deletes_the_staging_object(stub, store, dataset):
    data = image_bytes(500, 400, fmt="JPEG")
    upload = create_upload(stub, dataset, len(data), tags=["from browser"])
    code, reason, _ = failure(stub.FinalizeImageUpload, pb.FinalizeImageUploadRequest(name=upload.name))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "UPLOAD_MISSING")
    sent(upload, data)
    assert store.get_bytes(staging_key(upload)) == data
    image = finalize(stub, upload)
    assert image.filename == "browser.png" and list(image.tags) == ["from browser"]
    assert read_back(stub, image.name)[1] == data
    assert not store.exists(staging_key(upload))
    # Finalizing again answers with the same image.
    assert finalize(stub, upload) == image


def test_bad_bytes_sent_with_the_form_are_refused_at_finalize(stub, dataset):
    data = b"GIF89a" + b"\0" * 100
    upload = create_upload(stub, dataset, len(data))
    sent(upload, data)
    code, reason, _ = failure(stub.FinalizeImageUpload, pb.FinalizeImageUploadRequest(name=upload.name))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_FORMAT")
    assert stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 0


def test_the_store_refuses_a_body_of_any_other_size(stub, store, dataset):
    data = image_bytes(seed=8101)
    upload = create_upload(stub, dataset, len(data))
    # What a presigned PUT once took: far more than declared, and more than the service's limit.
    flood = data + bytes(60 * 1024 * 1024)
    assert s3_error(post_form(upload, flood)) == (400, "EntityTooLarge")
    assert s3_error(post_form(upload, data + b"\0")) == (400, "EntityTooLarge")
    assert s3_error(post_form(upload, data[:-1])) == (400, "EntityTooSmall")
    assert not store.exists(staging_key(upload))
    code, reason, _ = failure(stub.FinalizeImageUpload, pb.FinalizeImageUploadRequest(name=upload.name))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "UPLOAD_MISSING")


def test_the_store_refuses_another_key_and_an_altered_form(stub, store, dataset):
    data = image_bytes(seed=8102)
    upload = create_upload(stub, dataset, len(data))
    other = create_upload(stub, dataset, len(data))
    image = stream_upload(stub, dataset.name, image_bytes(seed=8103), filename="kept.png")
    parsed = names.parse_image(image.name)
    original = object_keys.original_key(parsed.dataset_id, parsed.image_id)
    for key in (staging_key(other), original, staging_key(upload) + "x", "elsewhere/photo.png"):
        assert s3_error(post_form(upload, data, key=key)) == (403, "AccessDenied"), key
    forged = {"x-amz-signature": "0" * 64}
    assert s3_error(post_form(upload, data, **forged))[0] == 403
    # A policy of one's own (another size), under the form's signature.
    policy = json.loads(base64.b64decode(upload.upload_fields["policy"]))
    policy["conditions"] = [c for c in policy["conditions"] if c[0] != "content-length-range"]
    widened = base64.b64encode(json.dumps(policy).encode()).decode()
    assert s3_error(post_form(upload, data, policy=widened))[0] == 403
    assert not store.exists(staging_key(upload)) and not store.exists(staging_key(other))
    assert read_back(stub, image.name)[1] == image_bytes(seed=8103)


def test_a_form_sent_again_after_finalize_can_write_only_its_own_object(stub, store, dataset):
    data = image_bytes(seed=8104)
    upload = create_upload(stub, dataset, len(data))
    sent(upload, data)
    image = finalize(stub, upload)
    assert not store.exists(staging_key(upload))
    # Until it expires the form stays a valid signature (a policy can't be withdrawn), but only
    # for what it was made for: one object of the declared size at its own key.
    assert s3_error(post_form(upload, data + bytes(1024 * 1024))) == (400, "EntityTooLarge")
    assert s3_error(post_form(upload, data, key=staging_key(upload) + "-2")) == (403, "AccessDenied")
    sent(upload, image_bytes(seed=8105)[:len(data)])
    # Nothing it sends becomes an image or replaces one: finalize keeps its first answer.
    assert finalize(stub, upload) == image
    assert read_back(stub, image.name)[1] == data
    assert stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 1


@pytest.fixture(scope="module")
def short_lived(aio: LoopThread, store: ObjectStore, s3_settings: ObjectStoreSettings,
                tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[DatasetService, dataset_pb2_grpc.DatasetServiceStub]]:
    """A dataset service whose upload forms live a few seconds."""
    settings = make_settings(tmp_path_factory.mktemp("short-forms"), s3_settings,
                             upload_url_ttl_seconds=SHORT_TTL_SECONDS)
    with aio.context(running_dataset_service(settings, store)) as running, \
            internal_channel(running.address, TEST_AUTH) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        yield running, stub


def finalize_until_expired(stub: dataset_pb2_grpc.DatasetServiceStub, upload: pb.ImageUpload) -> None:
    """Asks the service to finalize `upload` (nothing was POSTed, so it answers UPLOAD_MISSING and
    changes nothing) until it says the upload has expired: the service's own verdict, polled with a
    deadline. The service hands the store the same expiry instant and both read this machine's
    clock, so from then on the store holds the form expired too."""

    def expired() -> bool:
        code, reason, _ = failure(stub.FinalizeImageUpload, pb.FinalizeImageUploadRequest(name=upload.name))
        assert reason in ("UPLOAD_MISSING", "UPLOAD_EXPIRED"), (code, reason)
        assert reason == "UPLOAD_MISSING" or code == grpc.StatusCode.FAILED_PRECONDITION, (code, reason)
        return reason == "UPLOAD_EXPIRED"

    wait_until(expired, timeout=SHORT_TTL_SECONDS + 60, interval=0.2)


def test_the_store_refuses_an_expired_form_whether_used_or_not(aio, short_lived, store):
    service, stub = short_lived
    dataset = new_dataset(stub)
    data, late = image_bytes(seed=8106), image_bytes(seed=8107)
    used = create_upload(stub, dataset, len(data))
    sent(used, data)
    image = finalize(stub, used)
    sent(used, data)  # again: a staging object finalize will not delete
    # Made last, so it is the later to expire: past its deadline both forms are expired.
    unused = create_upload(stub, dataset, len(late))
    assert unused.expire_time.ToDatetime(dt.UTC) >= used.expire_time.ToDatetime(dt.UTC)
    finalize_until_expired(stub, unused)

    for upload, body in ((used, data), (unused, late)):
        assert s3_error(post_form(upload, body)) == (403, "AccessDenied")
    assert not store.exists(staging_key(unused))
    assert finalize(stub, used) == image
    # The expired uploads go with the next sweep, with what was sent after finalize; the image stays.
    assert aio.run(service.servicer.sweep_expired_uploads()) == 2
    assert not store.exists(staging_key(used))
    assert read_back(stub, image.name)[1] == data
