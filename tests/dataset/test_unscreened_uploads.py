"""Images uploaded while no tagger was configured were never screened: once screening is on,
the worker queues them as soon as a tagger is configured, and until they are screened they keep
snapshots waiting like any other unscreened image."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common.bundled_data import samples_dir
from services.common.errors import ServiceError
from services.common.internal_client import internal_channel
from services.common.settings import ServerSettings
from services.dataset.server import running_dataset_service
from services.dataset.snapshots_rpc import _check_screened
from services.tagger.server import running_tagger_service
from services.tagger.settings import TaggerSettings
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import new_dataset, upload
from tests.servers import TEST_AUTH


def test_images_uploaded_before_screening_keep_snapshots_waiting(aio, store, s3_settings, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("screening-late")
    with aio.context(running_dataset_service(make_settings(data_dir, s3_settings), store)) as service, \
            internal_channel(service.address, TEST_AUTH) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        dataset = new_dataset(stub)
        image = upload(stub, dataset.name, (samples_dir() / "camera.png").read_bytes(), tags=["mine"])
        assert image.auto_tagging.state == pb.TAGGING_STATE_SKIPPED

    tagger_settings = TaggerSettings(data_dir=tmp_path_factory.mktemp("late-tagger"), s3=s3_settings,
                                     server=ServerSettings(port=0, shutdown_grace=1.0), json_logs=False,
                                     internal_auth=TEST_AUTH)
    with aio.context(running_tagger_service(tagger_settings, store)) as tagger, \
            aio.context(running_dataset_service(make_settings(data_dir, s3_settings, tagger_address=tagger.address),
                                                store)) as service, \
            internal_channel(service.address, TEST_AUTH) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        # The worker takes them on by itself, as if they had just been uploaded: screened and
        # tagged, the caption someone wrote kept.
        aio.run(service.servicer.tagging.until_idle())
        screened = stub.GetImage(pb.GetImageRequest(name=image.name))
        assert screened.auto_tagging.state == pb.TAGGING_STATE_DONE and list(screened.tags) == ["mine"]
        assert screened.HasField("screening")
        assert stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name)).training_image_count == 1


def test_a_snapshot_names_images_still_unscreened() -> None:
    row = SimpleNamespace(id="img1", tagging_state="skipped", screening_verdict=None)
    done = SimpleNamespace(id="img2", tagging_state="done", screening_verdict="safe")
    with pytest.raises(ServiceError) as refused:
        _check_screened(SimpleNamespace(id="ds1"), [row, done])
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION and "RetagImages" in refused.value.message
    assert [v.description for v in refused.value.violations] == [
        "datasets/ds1/images/img1 is not screened yet (uploaded before a tagger was configured)"]
