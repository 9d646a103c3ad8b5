"""Uploads through both paths, normalisation, dedup, limits and reading back."""

from __future__ import annotations

import io
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

from kiln.v1 import dataset_pb2 as pb
from tests.dataset.helpers import failure, image_bytes, new_dataset, quota_failure, upload, upload_messages


@pytest.fixture
def dataset(stub):
    return new_dataset(stub)


def read_back(stub, name: str, variant: int = pb.IMAGE_VARIANT_ORIGINAL) -> tuple[pb.ReadImageMetadata, bytes]:
    responses = list(stub.ReadImage(pb.ReadImageRequest(name=name, variant=variant)))
    assert responses[0].WhichOneof("content") == "metadata"
    data = b"".join(r.chunk for r in responses[1:])
    assert len(data) == responses[0].metadata.size_bytes
    return responses[0].metadata, data


def test_png_and_jpeg_bytes_kept_exactly(stub, dataset):
    for data, content_type in [(image_bytes(300, 200), "image/png"),
                               (image_bytes(300, 200, fmt="JPEG", quality=85), "image/jpeg")]:
        image = upload(stub, dataset.name, data, filename="x.jpeg")
        assert (image.content_type, image.width, image.height) == (content_type, 300, 200)
        assert image.size_bytes == len(data) and not image.warnings
        meta, stored = read_back(stub, image.name)
        assert stored == data and meta.content_type == content_type


def test_multi_chunk_upload(stub, dataset):
    data = image_bytes(1200, 900)
    stream = list(upload_messages(dataset.name, data, chunk=64 * 1024))
    assert len(stream) > 10
    image = stub.UploadImage(iter(stream))
    assert read_back(stub, image.name)[1] == data


def test_exif_orientation_applied(stub, dataset):
    source = Image.fromarray(np.zeros((100, 200, 3), np.uint8))  # 200 wide, 100 high
    source.paste((255, 0, 0), (0, 0, 20, 100))  # a red band on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", exif=exif, quality=95)
    image = upload(stub, dataset.name, buffer.getvalue())
    assert (image.width, image.height) == (100, 200)
    assert any("orientation" in w for w in image.warnings)
    stored = Image.open(io.BytesIO(read_back(stub, image.name)[1]))
    assert stored.size == (100, 200) and stored.mode == "RGB"
    top = np.asarray(stored)[:10].mean(axis=(0, 1))
    assert top[0] > 150 and top[1] < 80  # the left band is now the top band


@pytest.mark.parametrize("kind", ["palette-transparent", "rgba", "la", "cmyk", "grey16", "bilevel", "grey-jpeg"])
def test_modes_normalised_to_rgb(stub, dataset, kind):
    rng = np.random.default_rng(7)
    buffer = io.BytesIO()
    if kind == "palette-transparent":
        image = Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).convert("P")
        image.info["transparency"] = 0
        image.save(buffer, format="PNG", transparency=0)
    elif kind == "rgba":
        pixels = rng.integers(0, 256, (80, 96, 4), dtype=np.uint8)
        pixels[:, :, 3] = 0  # fully transparent: must come out white
        Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    elif kind == "la":
        Image.fromarray(rng.integers(0, 256, (80, 96, 2), dtype=np.uint8), "LA").save(buffer, format="PNG")
    elif kind == "cmyk":
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).convert("CMYK").save(buffer, format="JPEG")
    elif kind == "grey16":
        Image.fromarray(np.full((80, 96), 65535, np.uint16)).save(buffer, format="PNG")
    elif kind == "bilevel":
        Image.fromarray(rng.integers(0, 2, (80, 96), dtype=np.uint8) * 255).convert("1").save(buffer, format="PNG")
    else:
        Image.fromarray(rng.integers(0, 256, (80, 96), dtype=np.uint8), "L").save(buffer, format="JPEG")
    image = upload(stub, dataset.name, buffer.getvalue())
    assert image.content_type == "image/png"  # rewritten losslessly, whatever came in
    assert bool(image.warnings) == (kind != "bilevel")  # black and white to RGB loses nothing worth saying
    stored = Image.open(io.BytesIO(read_back(stub, image.name)[1]))
    assert stored.mode == "RGB" and stored.size == (96, 80)
    pixels = np.asarray(stored)
    if kind == "rgba":
        assert (pixels == 255).all()
    if kind == "grey16":
        assert (pixels == 255).all()  # full-scale 16-bit white stays white, not clipped noise


def test_identical_bytes_are_one_image(stub, dataset):
    data = image_bytes(seed=42)
    first = upload(stub, dataset.name, data, filename="a.png")
    code, reason, _ = failure(upload, stub, dataset.name, data, filename="b.png",
                              role=pb.IMAGE_ROLE_REGULARIZATION)
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_IMAGE")
    listed = stub.ListImages(pb.ListImagesRequest(parent=dataset.name))
    assert [i.name for i in listed.images] == [first.name]
    # Another dataset may hold the same bytes.
    other = new_dataset(stub)
    assert upload(stub, other.name, data).sha256 == first.sha256


def test_retry_with_request_id_returns_the_same_image(stub, dataset):
    data = image_bytes(seed=3)
    first = upload(stub, dataset.name, data, request_id="retry-1")
    again = upload(stub, dataset.name, data, request_id="retry-1")
    assert again == first
    assert stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 1


def test_roles_limits_and_counts(stub, dataset):
    upload(stub, dataset.name, image_bytes(seed=1), repeat=3)
    upload(stub, dataset.name, image_bytes(seed=2))
    upload(stub, dataset.name, image_bytes(seed=3), role=pb.IMAGE_ROLE_REGULARIZATION)
    got = stub.GetDataset(pb.GetDatasetRequest(name=dataset.name))
    assert (got.training_image_count, got.regularization_image_count) == (2, 1)
    assert got.total_repeated_images == 3 + 10
    regs = stub.ListImages(pb.ListImagesRequest(parent=dataset.name, role=pb.IMAGE_ROLE_REGULARIZATION))
    assert regs.total_size == 1 and regs.images[0].role == pb.IMAGE_ROLE_REGULARIZATION


def test_thousand_and_first_training_image(stub, store, dataset, dataset_settings):
    limit = dataset_settings.max_training_images
    assert limit == 1000  # 1000 is the default
    data = [image_bytes(64, 64, seed=10_000 + i) for i in range(limit + 1)]
    for i in range(limit):
        upload(stub, dataset.name, data[i], filename=f"{i}.png")
    with pytest.raises(grpc.RpcError) as refused:
        upload(stub, dataset.name, data[limit])
    code, reason, _ = failure(upload, stub, dataset.name, data[limit])
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "IMAGE_LIMIT_REACHED")
    quota = quota_failure(refused.value)
    assert [(v.subject, v.description) for v in quota.violations] == [(dataset.name, "max_training_images")]
    assert stub.GetDataset(pb.GetDatasetRequest(name=dataset.name)).training_image_count == limit
    assert len(store.list_keys(dataset.name + "/images/")) == limit
    # Regularization images have their own limit.
    upload(stub, dataset.name, data[limit], role=pb.IMAGE_ROLE_REGULARIZATION)


def test_read_variants_and_urls(stub, store, dataset):
    data = image_bytes(640, 480)
    image = upload(stub, dataset.name, data)
    assert store.list_keys(image.name + "/") == [image.name + "/original"]
    meta, thumb = read_back(stub, image.name, pb.IMAGE_VARIANT_THUMBNAIL)
    assert meta.content_type == "image/webp"
    assert Image.open(io.BytesIO(thumb)).size == (256, 192) == (meta.width, meta.height)
    assert store.list_keys(image.name + "/") == [image.name + "/original", image.name + "/thumb.webp"]
    assert read_back(stub, image.name, pb.IMAGE_VARIANT_THUMBNAIL)[1] == thumb  # served from the cache
    code, reason, _ = failure(read_back, stub, image.name, pb.IMAGE_VARIANT_CROPPED)
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_CROPPED")
    url = stub.GetImageUrl(pb.GetImageUrlRequest(name=image.name, ttl_seconds=60)).url
    with urllib.request.urlopen(url) as response:
        assert response.read() == data


def test_list_pagination_and_deletes(stub, store, dataset):
    uploaded = [upload(stub, dataset.name, image_bytes(seed=100 + i)).name for i in range(7)]
    seen, token = [], ""
    while True:
        page = stub.ListImages(pb.ListImagesRequest(parent=dataset.name, page_size=3, page_token=token))
        assert page.total_size == 7
        seen += [i.name for i in page.images]
        token = page.next_page_token
        if not token:
            break
    assert seen == uploaded
    stub.DeleteImage(pb.DeleteImageRequest(name=uploaded[0]))
    code, _, _ = failure(stub.GetImage, pb.GetImageRequest(name=uploaded[0]))
    assert code == grpc.StatusCode.NOT_FOUND
    deleted = stub.BatchDeleteImages(pb.BatchDeleteImagesRequest(parent=dataset.name, names=uploaded[1:4]))
    assert deleted.deleted_count == 3
    assert stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 3
    assert len(store.list_keys(dataset.name + "/images/")) == 3
    # A batch naming a missing image deletes nothing.
    code, _, _ = failure(stub.BatchDeleteImages, pb.BatchDeleteImagesRequest(
        parent=dataset.name, names=[uploaded[4], uploaded[0]]))
    assert code == grpc.StatusCode.NOT_FOUND
    assert stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 3
