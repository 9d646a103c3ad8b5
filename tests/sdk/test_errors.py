"""KilnError from a status's details, a failed job's error, and the pieces of input the SDK and CLI
read before any call (addresses, `--set` overrides): no servers needed."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from kiln import JobFailed, KilnError
from kiln.channel import Target
from kiln.jobs import job_error
from kiln.training_config import load_config, overrides
from kiln.v1 import trainer_pb2 as tpb


def packed(*details: object) -> list[any_pb2.Any]:
    result = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)  # type: ignore[arg-type]
        result.append(item)
    return result


def test_a_status_becomes_an_error_with_every_detail_and_advice():
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(1500)
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="slow down", details=packed(
        error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="kiln.dev", metadata={"key": "k1"}),
        error_details_pb2.QuotaFailure(violations=[error_details_pb2.QuotaFailure.Violation(
            subject="key:k1", description="50 requests a second")]),
        retry))
    error = KilnError.from_status(status)
    assert (error.code, error.reason, error.metadata) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED",
                                                          {"key": "k1"})
    assert [(q.subject, q.description) for q in error.quota] == [("key:k1", "50 requests a second")]
    assert str(error) == ("RESOURCE_EXHAUSTED: slow down\n  - key:k1: 50 requests a second\n"
                          "How to fix: retry in 1.5 s")
    assert error.to_dict()["retry_delay"] == 1.5


def test_a_failed_job_raises_with_its_own_reason():
    bad = error_details_pb2.BadRequest(field_violations=[error_details_pb2.BadRequest.FieldViolation(
        field="config.resolution", description="too large for this worker")])
    job = tpb.TrainingJob(name="trainingJobs/abc", state=tpb.TrainingJob.STATE_FAILED, error=status_pb2.Status(
        code=code_pb2.FAILED_PRECONDITION, message="out of memory", details=packed(bad)))
    error = job_error(job)
    assert isinstance(error, JobFailed) and error.job == job
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.message == "training job trainingJobs/abc failed: out of memory"
    assert error.violations == [("config.resolution", "too large for this worker")]


@pytest.mark.parametrize(("url", "address", "tls"), [("localhost:50051", "localhost:50051", False),
                                                     ("grpc://10.0.0.1:443", "10.0.0.1:443", False),
                                                     ("grpcs://api.example.com:443/", "api.example.com:443", True)])
def test_gateway_addresses(url, address, tls):
    assert Target.parse(url) == Target(address, tls)


def test_a_url_that_is_no_gateway_address_is_refused():
    with pytest.raises(KilnError) as caught:
        Target.parse("https://example.com/api")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and caught.value.violations[0][0] == "url"


def test_set_overrides_become_a_job_and_its_field_mask():
    job, paths = overrides(["config.epochs=3", "config.preview.prompt=a cat, smiling", "display_name=v2",
                            "config.unet_lr=1e-4"])
    assert paths == ["config.epochs", "config.preview.prompt", "display_name", "config.unet_lr"]
    assert job.config.epochs == 3 and job.config.preview.prompt == "a cat, smiling"
    assert job.display_name == "v2" and job.config.unet_lr == pytest.approx(1e-4)
    for wrong in (["epochs"], ["config.epochz=3"], ["config.epochs=three"]):
        with pytest.raises(KilnError) as caught:
            overrides(wrong)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and caught.value.violations


def test_a_config_file_takes_kohyas_resolution_spellings(tmp_path):
    for text, size in (("resolution = 512", (512, 512)), ('resolution = "512,768"', (512, 768)),
                       ("[resolution]\nwidth = 640\nheight = 512", (640, 512))):
        path = tmp_path / "config.toml"
        path.write_text(f"epochs = 2\n{text}\n")
        config = load_config(path)
        assert (config.resolution.width, config.resolution.height) == size and config.epochs == 2
