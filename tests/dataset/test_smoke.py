from kiln.v1 import dataset_pb2 as pb
from tests.dataset.helpers import image_bytes, new_dataset, upload


def test_upload_crop_caption_snapshot(stub):
    ds = new_dataset(stub)
    img = upload(stub, ds.name, image_bytes(800, 600), tags=["a", "b"])
    assert img.width == 800 and list(img.tags) == ["a", "b"]
    events = list(stub.CropImages(pb.CropImagesRequest(parent=ds.name, mode=pb.CROP_MODE_FOCUS,
                                                         target_width=512, target_height=512)))
    assert events[-1].done == 1
    snap = stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=ds.name))
    assert snap.training_image_count == 1
