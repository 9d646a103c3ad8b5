"""Internal services accept calls only with the internal credential, and only then believe the
tenant a call names; health and reflection stay open to probes."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc, tagger_pb2, tagger_pb2_grpc
from services.common.internal_auth import TENANT_HEADER, InternalAuthError, InternalCredential
from services.common.internal_client import internal_channel, tenant_metadata
from services.common.settings import InternalAuthSettings, ServerSettings
from services.tagger.server import running_tagger_service
from services.tagger.settings import TaggerSettings
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload_messages
from tests.servers import TEST_AUTH

WRONG = InternalAuthSettings(token=SecretStr("not-the-token"))


def refused_calls(stub: dataset_pb2_grpc.DatasetServiceStub, dataset: pb.Dataset) -> dict[str, object]:
    """One call of every shape: unary, client streaming, server streaming."""
    image = "datasets/x/images/y"
    return {
        "GetDataset": lambda **kw: stub.GetDataset(pb.GetDatasetRequest(name=dataset.name), **kw),
        "CreateDataset": lambda **kw: stub.CreateDataset(pb.CreateDatasetRequest(
            dataset=pb.Dataset(display_name="intruder", family=pb.MODEL_FAMILY_SD15)), **kw),
        "UploadImage": lambda **kw: stub.UploadImage(upload_messages(dataset.name, image_bytes(seed=9901)), **kw),
        "ReadImage": lambda **kw: list(stub.ReadImage(pb.ReadImageRequest(name=image), **kw)),
    }


@pytest.mark.parametrize("credentials", ["none", "wrong"])
def test_calls_without_the_credential_are_unauthenticated(service, stub, credentials):
    dataset = new_dataset(stub)
    channel = (grpc.insecure_channel(service.address) if credentials == "none"
               else internal_channel(service.address, WRONG))
    with channel:
        outsider = dataset_pb2_grpc.DatasetServiceStub(channel)
        for method, call in refused_calls(outsider, dataset).items():
            # Naming a tenant changes nothing: it is believed only behind the credential.
            code, reason, _ = failure(call, metadata=tenant_metadata("default"))
            assert (method, code, reason) == (method, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    names = [d.display_name for d in stub.ListDatasets(pb.ListDatasetsRequest(page_size=100)).datasets]
    assert "intruder" not in names
    assert stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).total_size == 0


def test_health_and_reflection_need_no_credential(service):
    with grpc.insecure_channel(service.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_tenant_comes_from_metadata_behind_the_credential(stub):
    mine = stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(display_name="mine",
                                                                         family=pb.MODEL_FAMILY_SD15)),
                              metadata=tenant_metadata("tenant-trust-a"))
    code, _, _ = failure(stub.GetDataset, pb.GetDatasetRequest(name=mine.name),
                         metadata=tenant_metadata("tenant-trust-b"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert stub.GetDataset(pb.GetDatasetRequest(name=mine.name), metadata=tenant_metadata("tenant-trust-a")) == mine
    code, _, fields = failure(stub.GetDataset, pb.GetDatasetRequest(name=mine.name),
                              metadata=[(TENANT_HEADER, "Not A Tenant")])
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [TENANT_HEADER])


def test_the_tagger_refuses_calls_without_the_credential(aio, tmp_path):
    settings = TaggerSettings(tagger_dir=tmp_path, server=ServerSettings(port=0, shutdown_grace=1.0), json_logs=False,
                              internal_auth=TEST_AUTH)
    with aio.context(running_tagger_service(settings, None)) as tagger:
        with grpc.insecure_channel(tagger.address) as channel:
            stub = tagger_pb2_grpc.TaggerServiceStub(channel)
            code, reason, _ = failure(stub.ListTaggers, tagger_pb2.ListTaggersRequest())
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        with internal_channel(tagger.address, TEST_AUTH) as channel:
            assert tagger_pb2_grpc.TaggerServiceStub(channel).ListTaggers(tagger_pb2.ListTaggersRequest()).taggers


def test_a_service_without_a_credential_refuses_to_start():
    with pytest.raises(InternalAuthError, match="KILN_INTERNAL_AUTH__TOKEN"):
        InternalCredential(InternalAuthSettings())


def test_the_process_says_how_to_set_the_credential(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_DATA_DIR=str(tmp_path), KILN_JSON_LOGS="false")
    result = subprocess.run([sys.executable, "-m", "services.dataset"], env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode != 0
    assert "KILN_INTERNAL_AUTH__TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_internal_token_rotates_without_refusing_a_call(aio, tmp_path):
    """A rolling rotation: every service first accepts the new token, then sends it (still accepting
    the old one), then drops the old one. Callers of either phase are served throughout."""
    old, new = SecretStr("rotation-old-token"), SecretStr("rotation-new-token")
    phases = {"accept the new": InternalAuthSettings(token=old, accepted_tokens=[new]),
              "send the new": InternalAuthSettings(token=new, accepted_tokens=[old]),
              "drop the old": InternalAuthSettings(token=new)}
    senders = {"old": InternalAuthSettings(token=old), "new": InternalAuthSettings(token=new),
               "other": InternalAuthSettings(token=SecretStr("never-issued-token"))}
    served: dict[str, dict[str, object]] = {}
    for phase, auth in phases.items():
        settings = TaggerSettings(tagger_dir=tmp_path, server=ServerSettings(port=0, shutdown_grace=1.0),
                                  json_logs=False, internal_auth=auth)
        with aio.context(running_tagger_service(settings, None)) as tagger:
            for sender, sends in senders.items():
                with internal_channel(tagger.address, sends) as channel:
                    served.setdefault(phase, {})[sender] = _answer(tagger_pb2_grpc.TaggerServiceStub(channel))
    ok, refused = grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED
    assert served == {"accept the new": {"old": ok, "new": ok, "other": refused},
                      "send the new": {"old": ok, "new": ok, "other": refused},
                      "drop the old": {"old": refused, "new": ok, "other": refused}}


def _answer(stub: tagger_pb2_grpc.TaggerServiceStub) -> grpc.StatusCode:
    try:
        stub.ListTaggers(tagger_pb2.ListTaggersRequest(), timeout=30)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_an_empty_accepted_token_is_refused_at_start():
    with pytest.raises(InternalAuthError, match="KILN_INTERNAL_AUTH__ACCEPTED_TOKENS"):
        InternalCredential(InternalAuthSettings(token=SecretStr("t"), accepted_tokens=[SecretStr("")]))
