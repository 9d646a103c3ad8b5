"""Uploads are tagged and screened in the background by the real tagger service over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc, tagger_pb2_grpc
from kiln.v1 import tagger_pb2 as tpb
from kiln.v1 import tagging_types_pb2 as ttpb
from services.common.bundled_data import samples_dir
from services.common.hosting import RunningServer, run_service
from services.common.internal_client import internal_aio_channel, internal_channel
from services.common.ports import free_port
from services.common.server import ServiceBinding
from services.common.settings import ServerSettings
from services.dataset.server import DatasetService, running_dataset_service
from services.tagger.moderation import DEFAULT_RULES, ModerationPolicy, ModerationRule, SignalSource
from services.tagger.server import running_tagger_service
from services.tagger.settings import TaggerSettings
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload, upload_messages
from tests.servers import TEST_AUTH

# The built-in policy only blocks what these sample photos don't show; for the test a
# woman's face blocks, so the astronaut photo stands in for forbidden content.
TEST_POLICY = ModerationPolicy(rules=(*DEFAULT_RULES, ModerationRule(
    source=SignalSource.DETECTOR, label="FACE_FEMALE", review_at=0.3, block_at=0.5)))


class TaggerGate(tagger_pb2_grpc.TaggerServiceServicer):
    """Stands between the dataset service and the tagger service: passes TagImages on,
    except while held, when every call waits. Lives on the test loop."""

    def __init__(self, tagger_address: str) -> None:
        self._channel = internal_aio_channel(tagger_address, TEST_AUTH)
        self._tagger = tagger_pb2_grpc.TaggerServiceStub(self._channel)
        self._open = asyncio.Event()
        self._open.set()
        self.server: RunningServer | None = None

    async def TagImages(self, request: tpb.TagImagesRequest, context: grpc.aio.ServicerContext
                        ) -> tpb.TagImagesResponse:
        await self._open.wait()
        return await self._tagger.TagImages(request, timeout=context.time_remaining())

    async def hold(self) -> None:
        self._open.clear()

    async def release(self) -> None:
        self._open.set()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        binding = ServiceBinding("kiln.v1.TaggerService",
                                 lambda server: tagger_pb2_grpc.add_TaggerServiceServicer_to_server(self, server))
        try:
            async with run_service([binding], settings=ServerSettings(port=0, shutdown_grace=1.0)) as server:
                self.server = server
                yield server.address
                await self.release()
        finally:
            await self._channel.close()


@pytest.fixture(scope="module")
def tagger_settings(s3_settings, tmp_path_factory) -> TaggerSettings:
    return TaggerSettings(data_dir=tmp_path_factory.mktemp("tagger"), s3=s3_settings,
                          server=ServerSettings(port=0, shutdown_grace=1.0), json_logs=False,
                          internal_auth=TEST_AUTH, tagger_policy=TEST_POLICY)


@pytest.fixture(scope="module")
def tagger(aio, store, tagger_settings):
    with aio.context(running_tagger_service(tagger_settings, store)) as running:
        yield running


@pytest.fixture(scope="module")
def gate(aio, tagger) -> Iterator[TaggerGate]:
    async def make() -> TaggerGate:
        return TaggerGate(tagger.address)  # its channel and event belong to the test loop

    gate = aio.run(make())
    with aio.context(gate.serving()):
        yield gate


@pytest.fixture(scope="module")
def tagged(aio, store, s3_settings, tmp_path_factory, tagger, gate) -> Iterator[tuple[DatasetService, object]]:
    assert gate.server is not None
    settings = make_settings(tmp_path_factory.mktemp("tagged-dataset"), s3_settings,
                             tagger_address=gate.server.address)
    with aio.context(running_dataset_service(settings, store)) as dataset_service:
        yield dataset_service, tagger


@contextlib.contextmanager
def tagger_held(aio, gate: TaggerGate) -> Iterator[None]:
    aio.run(gate.hold())
    try:
        yield
    finally:
        aio.run(gate.release())


@pytest.fixture(scope="module")
def tstub(tagged) -> Iterator[dataset_pb2_grpc.DatasetServiceStub]:
    with internal_channel(tagged[0].address, TEST_AUTH) as channel:
        yield dataset_pb2_grpc.DatasetServiceStub(channel)


def settle(aio, service: DatasetService) -> None:
    aio.run(service.servicer.tagging.until_idle())


def sample(name: str) -> bytes:
    return (samples_dir() / name).read_bytes()


def test_uploads_are_tagged_and_screened(aio, tagged, tstub, gate):
    service, _ = tagged
    dataset = new_dataset(tstub)
    with tagger_held(aio, gate):
        # No image can be tagged while the tagger is held: an upload that waited for tagging
        # would run into its deadline here, and a fresh read shows the images still waiting.
        woman = tstub.UploadImage(upload_messages(dataset.name, sample("astronaut.png"), filename="astronaut.png"),
                                  timeout=30)
        man = tstub.UploadImage(upload_messages(dataset.name, sample("camera.png"), filename="camera.png"),
                                timeout=30)
        for image in (woman, man):
            assert tstub.GetImage(pb.GetImageRequest(name=image.name)).auto_tagging.state == \
                pb.TAGGING_STATE_PENDING
    settle(aio, service)
    woman = tstub.GetImage(pb.GetImageRequest(name=woman.name))
    man = tstub.GetImage(pb.GetImageRequest(name=man.name))
    for image in (woman, man):
        assert image.auto_tagging.state == pb.TAGGING_STATE_DONE and image.auto_tagging.tagger
        assert all(0 <= t.score <= 1 for t in image.auto_tagging.tags)
        # Nobody captioned these: the caption is the tagger's tags, without the rating.
        assert list(image.tags) == [t.name for t in image.auto_tagging.tags]
        assert not any(t.category == ttpb.TAG_CATEGORY_RATING for t in image.auto_tagging.tags)
        assert not image.caption_edited
    assert "1girl" in woman.tags
    assert {"greyscale", "monochrome"} & set(man.tags)
    assert woman.screening.decision == ttpb.MODERATION_DECISION_BLOCK
    assert any(f.label == "FACE_FEMALE" and f.decision == ttpb.MODERATION_DECISION_BLOCK
               for f in woman.screening.findings)
    assert man.screening.decision == ttpb.MODERATION_DECISION_ALLOW

    snapshot = tstub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name))
    assert (snapshot.training_image_count, snapshot.blocked_image_count) == (1, 1)


def test_hand_written_captions_are_never_replaced(aio, tagged, tstub):
    service, _ = tagged
    dataset = new_dataset(tstub)
    image = upload(tstub, dataset.name, sample("chelsea.png"), tags=["mycat", "sitting"])
    assert image.caption_edited
    settle(aio, service)
    image = tstub.GetImage(pb.GetImageRequest(name=image.name))
    assert image.auto_tagging.state == pb.TAGGING_STATE_DONE
    assert list(image.tags) == ["mycat", "sitting"]

    def retag(merge, **options):
        queued = tstub.RetagImages(pb.RetagImagesRequest(parent=dataset.name, merge=merge,
                                                         options=ttpb.TaggingOptions(**options)))
        assert queued.queued_count == 1
        settle(aio, service)
        return tstub.GetImage(pb.GetImageRequest(name=image.name))

    ignored = retag(pb.CAPTION_MERGE_IGNORE, include_rating=True)
    assert list(ignored.tags) == ["mycat", "sitting"]
    assert any(t.category == ttpb.TAG_CATEGORY_RATING for t in ignored.auto_tagging.tags)
    appended = retag(pb.CAPTION_MERGE_APPEND, include_rating=False)
    suggested = [t.name for t in appended.auto_tagging.tags]
    assert list(appended.tags) == ["mycat", "sitting", *[t for t in suggested if t not in ("mycat", "sitting")]]
    overwritten = retag(pb.CAPTION_MERGE_OVERWRITE, include_rating=False)
    assert list(overwritten.tags) == suggested
    code, _, fields = failure(tstub.RetagImages, pb.RetagImagesRequest(parent=dataset.name))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["merge"])


def test_editing_tags_marks_the_caption_as_a_persons(aio, tagged, tstub):
    service, _ = tagged
    dataset = new_dataset(tstub)
    image = upload(tstub, dataset.name, sample("rocket.jpg"))
    settle(aio, service)
    tstub.AddImageTags(pb.AddImageTagsRequest(name=image.name, tags=["trigger"], position=pb.TAG_POSITION_HEAD))
    assert tstub.GetImage(pb.GetImageRequest(name=image.name)).caption_edited


def test_a_tagger_outage_never_blocks_uploads(aio, store, s3_settings, tmp_path):
    settings = make_settings(tmp_path, s3_settings, tagger_address=f"127.0.0.1:{free_port()}", tagging_max_attempts=1)
    with aio.context(running_dataset_service(settings, store)) as service, \
            internal_channel(service.address, TEST_AUTH) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        dataset = new_dataset(stub)
        image = upload(stub, dataset.name, image_bytes(seed=5))
        settle(aio, service)
        image = stub.GetImage(pb.GetImageRequest(name=image.name))
        assert image.auto_tagging.state == pb.TAGGING_STATE_FAILED
        assert "UNAVAILABLE" in image.auto_tagging.error and image.auto_tagging.attempts == 1
        code, reason, fields = failure(stub.CreateSnapshot, pb.CreateSnapshotRequest(parent=dataset.name))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SCREENING_INCOMPLETE")
        assert fields == ["parent"]


def test_without_a_tagger_images_are_marked_skipped(stub):
    dataset = new_dataset(stub)
    image = upload(stub, dataset.name, image_bytes(seed=9))
    assert image.auto_tagging.state == pb.TAGGING_STATE_SKIPPED
    code, reason, _ = failure(stub.RetagImages, pb.RetagImagesRequest(parent=dataset.name,
                                                                      merge=pb.CAPTION_MERGE_APPEND))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TAGGING_DISABLED")


def test_an_installed_wd_model_takes_over(aio, tagged, tstub, tagger_settings, tmp_path):
    from services.tagger.registry import TaggerRegistry
    from services.tagger.synthetic import write_linear_wd_model

    service, _ = tagged
    # A WD14-format model whose scores are fixed by its biases: `long_hair` and `blue_sky` above 0.35.
    tags = (("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
            ("long_hair", 0), ("blue_sky", 0), ("guro", 0), ("hatsune_miku", 4))
    model = write_linear_wd_model(tmp_path / "wd", tags, [3.0, -3, -3, -3, 2.0, 1.0, -4, -4])
    registry = TaggerRegistry(tagger_settings.taggers_dir())
    registry.install("wd-test", model / "model.onnx", model / "selected_tags.csv")
    try:
        dataset = new_dataset(tstub)
        image = upload(tstub, dataset.name, image_bytes(seed=21))
        settle(aio, service)
        image = tstub.GetImage(pb.GetImageRequest(name=image.name))
        assert image.auto_tagging.tagger == "taggers/wd-test"
        assert list(image.tags) == ["long hair", "blue sky"]
        assert image.screening.decision == ttpb.MODERATION_DECISION_ALLOW
    finally:
        registry.remove("wd-test")
