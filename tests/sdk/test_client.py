"""The Python SDK's client through a real gateway: where it finds its address and key, the errors it
raises, and uploading a folder (progress, resuming by hash, refusing what isn't an image)."""

from __future__ import annotations

import grpc
import pytest

from kiln import Client, KilnError
from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as tpb
from services.gateway.key_auth import REFUSED
from tests.dataset.helpers import image_bytes
from tests.sdk.conftest import free_port, gateway_on, new_key, photo_folder
from tests.training_service.test_training_jobs import tiny_job


def test_the_client_takes_its_address_and_key_from_arguments_or_the_environment(gateway, gateway_dir,
                                                                                 monkeypatch):
    key = new_key(gateway_dir, "env-or-args")
    monkeypatch.setenv("KILN_URL", gateway.address)
    monkeypatch.setenv("KILN_API_KEY", key)
    with Client() as from_env:
        created = from_env.create_dataset("cats", "sd15", default_repeat=3)
    monkeypatch.delenv("KILN_URL")
    monkeypatch.delenv("KILN_API_KEY")
    with Client(f"grpc://{gateway.address}", key) as from_args:
        # The id alone names a dataset; the stubs are there for everything else.
        assert from_args.get_dataset(created.name.split("/")[1]) == created
        listed = from_args.datasets.ListDatasets(dpb.ListDatasetsRequest())
    assert [d.name for d in listed.datasets] == [created.name]
    assert created.family == dpb.MODEL_FAMILY_SD15 and created.default_repeat == 3


def test_a_missing_or_refused_key_says_how_to_get_one(gateway, monkeypatch):
    monkeypatch.delenv("KILN_API_KEY", raising=False)
    monkeypatch.delenv("KILN_URL", raising=False)
    with pytest.raises(KilnError) as missing:
        Client(gateway.address)
    assert missing.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert missing.value.violations == [("api_key", "pass api_key=… or set KILN_API_KEY")]
    assert "KILN_API_KEY" in str(missing.value) and "KILN_URL" in str(missing.value)

    with Client(gateway.address, "kiln_0123456789ab_" + "x" * 32) as stranger, pytest.raises(KilnError) as refused:
        list(stranger.list_datasets())
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED and refused.value.message == REFUSED
    assert "KILN_API_KEY" in str(refused.value)


def test_an_invalid_request_raises_kiln_error_with_every_violation(client, tmp_path):
    dataset = client.create_dataset("cats", "sd15")
    client.upload_file(dataset.name, photo_folder(tmp_path, 1) / "photo0.png")
    with pytest.raises(KilnError) as caught:
        client.trainer.CreateTrainingJob(tpb.CreateTrainingJobRequest(training_job=tiny_job(
            dataset.name, network_dim=0, unet_lr=-1.0)))
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.reason
    fields = [name for name, _ in error.violations]
    assert "training_job.config.network_dim" in fields and "training_job.config.unet_lr" in fields
    text = str(error)
    assert text.startswith("INVALID_ARGUMENT:") and "  - training_job.config.network_dim: " in text
    assert "How to fix: fix the fields listed" in text
    with pytest.raises(KilnError) as unknown:
        client.get_dataset("0123456789abcdef")
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND


def test_a_refused_rate_carries_its_quota_and_when_to_retry(aio, gateway, api_key):
    port = free_port()
    with gateway_on(aio, port, gateway, key_requests_per_second=0.1, key_request_burst=1), \
            Client(f"127.0.0.1:{port}", api_key) as client:
        list(client.list_datasets())
        with pytest.raises(KilnError) as caught:
            list(client.list_datasets())
    error = caught.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.quota
    assert error.quota[0].subject.startswith("key:")
    assert error.retry_delay is not None and 0 < error.retry_delay <= 10
    assert f"How to fix: retry in {error.retry_delay:g} s" in str(error)


def test_upload_folder_shows_progress_and_a_second_run_skips_what_is_there(client, tmp_path, capsys):
    dataset = client.create_dataset("uploads", "sd15")
    folder = photo_folder(tmp_path / "photos", 3)
    first = client.upload_folder(dataset.name, folder)
    bar = capsys.readouterr().err
    assert "upload photos" in bar and "100%" in bar
    assert sorted(image.filename for image in first) == ["photo0.png", "photo1.png", "photo2.png"]
    captioned = next(image for image in first if image.filename == "photo0.png")
    assert list(captioned.tags[:2]) == ["mytrigger", "pose0"]

    assert client.upload_folder(dataset.name, folder) == []
    assert "3 of 3 images already in" in capsys.readouterr().err
    # A new photo in the folder: only it goes up.
    photo_folder(tmp_path / "photos", 4)
    added = client.upload_folder(dataset.name, folder, progress=False)
    assert [image.filename for image in added] == ["photo3.png"]
    assert sorted(i.sha256 for i in client.list_images(dataset.name)) == sorted(
        i.sha256 for i in [*first, *added])


def test_a_second_run_skips_images_stored_in_another_form(client, tmp_path, capsys):
    # Stored otherwise than uploaded: greyscale (normalised to RGB) and a PNG with bytes after its end.
    dataset = client.create_dataset("normalised uploads", "sd15")
    folder = tmp_path / "normalised"
    folder.mkdir()
    (folder / "grey.png").write_bytes(image_bytes(96, 96, mode="L", seed=1))
    (folder / "tail.png").write_bytes(image_bytes(96, 96, seed=2) + b"trailing bytes")
    first = client.upload_folder(dataset.name, folder, progress=False)
    assert all(image.sha256 != image.upload_sha256 for image in first)
    capsys.readouterr()
    assert client.upload_folder(dataset.name, folder) == []
    assert "2 of 2 images already in" in capsys.readouterr().err


def test_a_deleted_image_uploaded_again_comes_back(client, tmp_path):
    dataset = client.create_dataset("again", "sd15")
    folder = photo_folder(tmp_path / "again", 1)
    (image,) = client.upload_folder(dataset.name, folder, progress=False)
    assert client.upload_file(dataset.name, folder / "photo0.png") == image  # the same request: its answer
    client.datasets.DeleteImage(dpb.DeleteImageRequest(name=image.name))
    (again,) = client.upload_folder(dataset.name, folder, progress=False)
    assert again.name != image.name and again.sha256 == image.sha256
    assert [i.name for i in client.list_images(dataset.name)] == [again.name]


def test_a_folder_with_files_that_are_not_images_is_refused_before_any_upload(client, tmp_path):
    dataset = client.create_dataset("mixed", "sd15")
    folder = photo_folder(tmp_path / "mixed", 2)
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4")
    (folder / "fake.png").write_bytes(b"not really a png")
    with pytest.raises(KilnError) as caught:
        client.upload_folder(dataset.name, folder, progress=False)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.violations) == {
        str(folder / "fake.png"): "named .png but its content is not a PNG or JPEG image",
        str(folder / "notes.pdf"): "not a PNG or JPEG file (.png, .jpg, .jpeg): move it out of the folder"}
    assert "nothing was uploaded" in str(error)
    assert list(client.list_images(dataset.name)) == []


def test_a_dataset_is_prepared_with_the_sdks_helpers(client, tmp_path):
    dataset = client.create_dataset("prepared", "sd15", default_repeat=2)
    client.upload_folder(dataset.name, photo_folder(tmp_path / "prepared", 2), progress=False)
    images = client.wait_for_tagging(dataset.name, progress=False)
    assert len(images) == 2 and all(i.auto_tagging.state != dpb.TAGGING_STATE_PENDING for i in images)
    summary = client.crop_images(dataset.name, "focus", progress=False)
    assert (summary.done, summary.total) == (2, 2)
    assert {(i.crop.target_width, i.crop.target_height) for i in client.list_images(dataset.name)} == {(512, 512)}
    assert client.add_tag(dataset.name, "kilnsample", head=True) == 2
    repeated = client.set_repeat(images[0].name, 4)
    assert repeated.effective_repeat == 4 and repeated.tags[0] == "kilnsample"
    assert client.get_dataset(dataset.name).total_repeated_images == 4 + 2
    with pytest.raises(KilnError) as caught:
        client.crop_images(dataset.name, "sideways")
    assert caught.value.violations == [("mode", "focus or center")]
