"""Reading an image whose bytes are gone (a read racing DeleteImage, which removes the record
first and the objects after it) answers NOT_FOUND, never INTERNAL, and streams nothing first."""

from __future__ import annotations

import grpc
import pytest

from kiln.v1 import dataset_pb2 as pb
from services.common.errors import status_details
from services.common.objectstore import ObjectStore
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload

VARIANTS = [pb.IMAGE_VARIANT_ORIGINAL, pb.IMAGE_VARIANT_THUMBNAIL, pb.IMAGE_VARIANT_CROPPED]


@pytest.fixture
def vanished(stub, store: ObjectStore) -> pb.Image:
    """A cropped image whose original, like a deleted image's, is no longer in the store."""
    dataset = new_dataset(stub)
    image = upload(stub, dataset.name, image_bytes(700, 500, seed=7200))
    list(stub.CropImages(pb.CropImagesRequest(parent=dataset.name, mode=pb.CROP_MODE_CENTER, target_width=512,
                                              target_height=512)))
    store.delete(image.name + "/original")
    return image


@pytest.mark.parametrize("variant", VARIANTS, ids=["original", "thumbnail", "cropped"])
def test_read_image_of_vanished_bytes(stub, vanished: pb.Image, variant: int) -> None:
    received = []
    with pytest.raises(grpc.RpcError) as raised:
        for response in stub.ReadImage(pb.ReadImageRequest(name=vanished.name, variant=variant)):
            received.append(response)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    info, _ = status_details(raised.value)
    assert info is not None and info.reason == "NOT_FOUND" and info.metadata["resource"] == vanished.name
    assert "deleted" in (raised.value.details() or "")
    assert received == []


@pytest.mark.parametrize("variant", VARIANTS[1:], ids=["thumbnail", "cropped"])
def test_image_url_of_vanished_bytes(stub, vanished: pb.Image, variant: int) -> None:
    code, reason, _ = failure(stub.GetImageUrl, pb.GetImageUrlRequest(name=vanished.name, variant=variant))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
