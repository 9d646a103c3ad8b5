"""Images uploaded while no tagger was configured were never screened: once screening is on,
they keep snapshots waiting like any other unscreened image until someone re-tags them."""

from __future__ import annotations

import grpc
import pytest

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common.bundled_data import samples_dir
from services.common.errors import status_details
from services.common.settings import ServerSettings
from services.dataset.server import running_dataset_service
from services.tagger.server import running_tagger_service
from services.tagger.settings import TaggerSettings
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import new_dataset, upload


def test_images_uploaded_before_screening_keep_snapshots_waiting(aio, store, s3_settings, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("screening-late")
    with aio.context(running_dataset_service(make_settings(data_dir, s3_settings), store)) as service, \
            grpc.insecure_channel(service.address) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        dataset = new_dataset(stub)
        image = upload(stub, dataset.name, (samples_dir() / "camera.png").read_bytes(), tags=["mine"])
        assert image.auto_tagging.state == pb.TAGGING_STATE_SKIPPED

    tagger_settings = TaggerSettings(data_dir=tmp_path_factory.mktemp("late-tagger"), s3=s3_settings,
                                     server=ServerSettings(port=0, shutdown_grace=1.0), json_logs=False)
    with aio.context(running_tagger_service(tagger_settings, store)) as tagger, \
            aio.context(running_dataset_service(make_settings(data_dir, s3_settings, tagger_address=tagger.address),
                                                store)) as service, \
            grpc.insecure_channel(service.address) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name))
        info, violations = status_details(refused.value)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info is not None and info.reason == "SCREENING_INCOMPLETE"
        assert "RetagImages" in (refused.value.details() or "")
        assert [v.field for v in violations] == ["parent"] and image.name in violations[0].description
        # The way out the refusal names: re-tag them, keeping the captions.
        stub.RetagImages(pb.RetagImagesRequest(parent=dataset.name, merge=pb.CAPTION_MERGE_IGNORE))
        aio.run(service.servicer.tagging.until_idle())
        screened = stub.GetImage(pb.GetImageRequest(name=image.name))
        assert screened.auto_tagging.state == pb.TAGGING_STATE_DONE and list(screened.tags) == ["mine"]
        assert stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name)).training_image_count == 1
