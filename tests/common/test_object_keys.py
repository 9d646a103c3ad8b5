"""One owner per object-key prefix, and keys built and read in one place."""

from __future__ import annotations

import pytest

from services.common import object_keys
from services.common.object_keys import Service

SHA = "ab" * 32


def test_every_prefix_has_exactly_the_owner_the_services_agree_on():
    assert object_keys.owned_prefixes(Service.DATASET) == ("datasets/", "uploads/")
    assert object_keys.owned_prefixes(Service.TRAINER) == ("trainingJobs/", "models/")
    assert object_keys.owner_of("trainingJobs/j1/epochs/1/lora.safetensors") is Service.TRAINER
    assert object_keys.owner_of("somewhere/else") is None
    # A prefix match is on whole segments' starts only: `datasetsX/` is nobody's.
    assert object_keys.owner_of("datasetsX/a") is None


def test_each_builder_writes_under_its_services_prefixes():
    dataset_keys = [object_keys.original_key("d1", "i1"), object_keys.thumbnail_key("d1", "i1"),
                    object_keys.crop_key("d1", "i1", "f00"), object_keys.snapshot_manifest_key("d1", SHA),
                    object_keys.staging_key("d1", "u1")]
    assert all(object_keys.owned_by(Service.DATASET, key) for key in dataset_keys)
    trainer_keys = [object_keys.training_job_prefix("j1") + "epochs/1/lora.safetensors",
                    object_keys.model_prefix("m1") + "lora.safetensors"]
    assert object_keys.only_owned(Service.DATASET, dataset_keys + trainer_keys) == dataset_keys
    assert object_keys.only_owned(Service.TRAINER, dataset_keys + trainer_keys) == trainer_keys


def test_keys_are_read_back_into_the_ids_they_were_built_from():
    assert object_keys.image_of(object_keys.crop_key("d1", "i1", "f00")) == ("d1", "i1")
    assert object_keys.dataset_of(object_keys.snapshot_manifest_key("d1", SHA)) == "d1"
    assert object_keys.is_snapshot_manifest(object_keys.snapshot_manifest_key("d1", SHA))
    assert not object_keys.is_snapshot_manifest(object_keys.original_key("d1", "i1"))
    assert object_keys.dataset_of(object_keys.staging_key("d1", "u1")) is None
    assert object_keys.image_of(object_keys.training_job_prefix("j1") + "x") is None


def test_a_snapshot_name_gives_its_manifest_key():
    assert object_keys.manifest_key_of(f"datasets/d1/snapshots/{SHA}") == object_keys.snapshot_manifest_key(
        "d1", SHA)
    for name in ("datasets/d1", f"datasets/d1/images/{SHA}", f"datasets/D1/snapshots/{SHA}",
                 "datasets/d1/snapshots/abc", f"trainingJobs/j/snapshots/{SHA}"):
        with pytest.raises(ValueError):
            object_keys.manifest_key_of(name)


def test_an_id_that_would_climb_into_another_resource_is_refused():
    # `staging_key(d, "")` would be the prefix of every upload of the dataset.
    for build in (lambda: object_keys.staging_key("d1", ""), lambda: object_keys.original_key("d1/images", "x"),
                  lambda: object_keys.training_job_prefix("")):
        with pytest.raises(ValueError):
            build()
