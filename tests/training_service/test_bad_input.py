"""Each wrong request gets its precise status, and nothing is queued or half-written."""

from __future__ import annotations

import grpc
import pytest

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from services.common.errors import status_details
from tests.training_service.test_training_jobs import tiny_job


def refused(call, request) -> tuple[grpc.StatusCode, set[str], str]:
    with pytest.raises(grpc.RpcError) as caught:
        result = call(request)
        if hasattr(result, "__iter__") and not isinstance(result, pb.TrainingJob):
            list(result)
    info, violations = status_details(caught.value)
    return caught.value.code(), {v.field for v in violations}, info.reason if info else ""


def test_unknown_preset_and_base_model_are_named(tenant):
    dataset = tenant.dataset(images=1)
    job = tiny_job(dataset.name)
    job.preset = "presets/no-such-theme"
    job.config.base_model = "baseModels/no-such-model"
    code, fields, _ = refused(tenant.trainer.CreateTrainingJob, pb.CreateTrainingJobRequest(training_job=job))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "training_job.preset" in fields
    job.preset = ""
    code, fields, _ = refused(tenant.trainer.CreateTrainingJob, pb.CreateTrainingJobRequest(training_job=job))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == {"training_job.config.base_model"}
    assert not tenant.trainer.ListTrainingJobs(pb.ListTrainingJobsRequest()).training_jobs


def test_a_snapshot_of_the_other_family_and_missing_weights_are_refused(tenant):
    sdxl = tenant.dataset(images=1, family=dpb.MODEL_FAMILY_SDXL)
    code, fields, _ = refused(tenant.trainer.CreateTrainingJob, pb.CreateTrainingJobRequest(
        training_job=tiny_job(sdxl.name)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "training_job.preset" in fields  # the preset chose tiny-sd15
    sd15 = tenant.dataset(images=1)
    job = tiny_job(sd15.name)
    job.preset = "presets/standard-sd15"  # SD1.5 itself: weights an operator imports, not installed here
    job.config.ClearField("network_dim")
    code, fields, _ = refused(tenant.trainer.CreateTrainingJob, pb.CreateTrainingJobRequest(training_job=job))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "training_job.preset" in fields
    with pytest.raises(grpc.RpcError) as caught:
        tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=job))
    assert "import" in caught.value.details()


def test_finished_deleted_and_missing_jobs(tenant):
    dataset = tenant.dataset(images=1)
    job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))
    code, _, reason = refused(tenant.trainer.CancelTrainingJob, pb.CancelTrainingJobRequest(name=job.name))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "JOB_FINISHED"
    code, _, _ = refused(tenant.trainer.GenerateImages, pb.GenerateImagesRequest(training_job=job.name))
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # nothing saved to generate with
    tenant.trainer.DeleteTrainingJob(pb.DeleteTrainingJobRequest(name=job.name))
    for call, request in [
        (tenant.trainer.WatchTrainingJob, pb.WatchTrainingJobRequest(name=job.name)),
        (tenant.trainer.GetTrainingJob, pb.GetTrainingJobRequest(name=job.name)),
        (tenant.trainer.RetrainTrainingJob, pb.RetrainTrainingJobRequest(name="trainingJobs/0123456789abcdef")),
    ]:
        assert refused(call, request)[0] == grpc.StatusCode.NOT_FOUND
    code, fields, _ = refused(tenant.trainer.GetTrainingJob, pb.GetTrainingJobRequest(name="jobs/x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == {"name"}
    code, fields, _ = refused(tenant.trainer.RetrainTrainingJob, pb.RetrainTrainingJobRequest(
        name=job.name, update_mask={"paths": ["config.no_such_field", "snapshot"]}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == {"update_mask.paths[0]", "update_mask.paths[1]"}


def test_a_watch_from_a_seq_the_job_never_reached_is_out_of_range(tenant):
    dataset = tenant.dataset(images=1)
    job = tenant.trainer.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=tiny_job(dataset.name)))
    tenant.trainer.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name))
    code, _, reason = refused(tenant.trainer.WatchTrainingJob, pb.WatchTrainingJobRequest(name=job.name,
                                                                                         after_seq=10_000))
    assert code == grpc.StatusCode.OUT_OF_RANGE and reason == "SEQ_OUT_OF_RANGE"


def test_base_models_and_presets_come_from_the_catalog(tenant):
    models = tenant.trainer.ListBaseModels(pb.ListBaseModelsRequest()).base_models
    tiny = next(m for m in models if m.name == "baseModels/tiny-sd15")
    assert tiny.installed and tiny.builtin and "presets/demo-tiny-sd15" in tiny.presets
    sd15 = tenant.trainer.GetBaseModel(pb.GetBaseModelRequest(name="baseModels/sd15"))
    assert not sd15.installed and sd15.source_hint
    presets = tenant.trainer.ListPresets(pb.ListPresetsRequest(family=dpb.MODEL_FAMILY_SDXL)).presets
    themes = {p.theme for p in presets}
    assert {"anime_character", "real_person", "2_5d", "standard"} <= themes
    anime = tenant.trainer.GetPreset(pb.GetPresetRequest(name="presets/anime-character-sd15"))
    assert anime.config.clip_skip == 2 and anime.config.base_model == "baseModels/anything-v5"
    assert refused(tenant.trainer.GetPreset, pb.GetPresetRequest(name="presets/nope"))[0] == grpc.StatusCode.NOT_FOUND
