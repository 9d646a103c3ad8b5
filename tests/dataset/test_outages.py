"""When the object store or the database is killed or hangs: callers hear UNAVAILABLE naming the
dependency (with retry advice) within the call's deadline, readiness drains the replica, nothing
acknowledged is lost, and the service heals by itself once the dependency is back.

Real SeaweedFS and PostgreSQL processes are stopped (SIGSTOP), resumed, killed (SIGKILL) and
restarted; the dataset service runs in-process, and as a real process for SIGTERM."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common.embedded_s3 import EmbeddedS3
from services.common.internal_client import internal_channel
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.ports import free_port
from services.common.settings import ObjectStoreSettings, ServerSettings
from services.dataset.server import running_dataset_service
from tests.common.outage_helpers import NOT_SERVING, SERVING, outage, wait_for_health
from tests.common.waiting import wait_until
from tests.conftest import ACCESS_KEY, SECRET_KEY
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import image_bytes, new_dataset, upload_messages
from tests.servers import TEST_AUTH, TEST_INTERNAL_TOKEN, PostgresCluster, signal_all, wait_stopped

# Short ceilings, so an outage is told apart from the client's own (much longer) deadline: only
# the service can answer UNAVAILABLE naming the dependency.
CEILING = 1.5
CLIENT_DEADLINE = 30.0


@dataclass
class Rig:
    s3: EmbeddedS3
    channel: grpc.Channel
    stub: dataset_pb2_grpc.DatasetServiceStub

    def pause_store(self) -> None:
        assert self.s3.process is not None
        os.killpg(self.s3.process.pid, signal.SIGSTOP)
        wait_stopped(self.s3.process.pid)

    def resume_store(self) -> None:
        assert self.s3.process is not None
        os.killpg(self.s3.process.pid, signal.SIGCONT)

    def kill_store(self) -> None:
        assert self.s3.process is not None
        os.killpg(self.s3.process.pid, signal.SIGKILL)
        self.s3.process.wait()


def store_settings(s3: EmbeddedS3, bucket: str) -> ObjectStoreSettings:
    return ObjectStoreSettings(endpoint=s3.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, bucket=bucket,
                               call_timeout_seconds=CEILING, connect_timeout_seconds=0.5)


@contextlib.contextmanager
def rig(aio: LoopThread, tmp_path: pathlib.Path, database_url: str = "") -> Iterator[Rig]:
    s3 = EmbeddedS3(tmp_path / "s3", ACCESS_KEY, SECRET_KEY).start()
    try:
        s3_settings = store_settings(s3, "outages")
        store = ObjectStore(s3_settings)
        store.ensure_bucket()
        settings = make_settings(
            tmp_path / "dataset", s3_settings, database_timeout_seconds=CEILING, database_connect_timeout_seconds=1,
            crop_use_detector=False, dataset_database_url=database_url,
            server=ServerSettings(port=0, shutdown_grace=1.0, readiness_interval_seconds=0.2,
                                  readiness_timeout_seconds=0.5))
        with aio.context(running_dataset_service(settings, store)) as service, \
                internal_channel(service.address, TEST_AUTH) as channel:
            yield Rig(s3, channel, dataset_pb2_grpc.DatasetServiceStub(channel))
    finally:
        if s3.process is not None and s3.process.poll() is None:
            os.killpg(s3.process.pid, signal.SIGCONT)
        s3.stop()


def upload_call(stub: dataset_pb2_grpc.DatasetServiceStub, dataset: pb.Dataset, seed: int,
                request_id: str = "") -> pb.Image:
    return stub.UploadImage(upload_messages(dataset.name, image_bytes(seed=seed), request_id=request_id),
                            timeout=CLIENT_DEADLINE)


def answered(call: Callable[[], pb.Image]) -> pb.Image | None:
    """The call's answer, or None while the service answers UNAVAILABLE (a client retries those)."""
    try:
        return call()
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return None


def test_a_hung_object_store_answers_unavailable_drains_and_heals(aio, tmp_path):
    with rig(aio, tmp_path) as r:
        dataset = new_dataset(r.stub)
        image = upload_call(r.stub, dataset, 8101)
        r.pause_store()
        try:
            code, dependency, retry = outage(upload_call, r.stub, dataset, 8102, "hung-store-upload")
            assert (code, dependency) == (grpc.StatusCode.UNAVAILABLE, "object store")
            assert retry is not None and retry > 0
            read = r.stub.ReadImage(pb.ReadImageRequest(name=image.name), timeout=CLIENT_DEADLINE)
            assert outage(list, read)[:2] == (grpc.StatusCode.UNAVAILABLE, "object store")
            wait_for_health(r.channel, NOT_SERVING)
        finally:
            r.resume_store()
        wait_for_health(r.channel, SERVING)
        # The retry of the failed upload makes the image, once.
        again = upload_call(r.stub, dataset, 8102, "hung-store-upload")
        assert upload_call(r.stub, dataset, 8102, "hung-store-upload") == again
        listed = r.stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).images
        assert sorted(i.name for i in listed) == sorted([image.name, again.name])
        assert b"".join(m.chunk for m in r.stub.ReadImage(pb.ReadImageRequest(name=image.name))) == \
            image_bytes(seed=8101)


def test_a_killed_object_store_answers_unavailable_and_the_service_heals_when_it_is_back(aio, tmp_path):
    with rig(aio, tmp_path) as r:
        dataset = new_dataset(r.stub)
        kept = upload_call(r.stub, dataset, 8201)
        r.kill_store()
        code, dependency, _ = outage(upload_call, r.stub, dataset, 8202, "killed-store-upload")
        assert (code, dependency) == (grpc.StatusCode.UNAVAILABLE, "object store")
        wait_for_health(r.channel, NOT_SERVING)
        r.s3.start()  # same ports, same data
        wait_for_health(r.channel, SERVING)
        # The store may answer before it takes writes again: the client retries the same request.
        retried = wait_until(lambda: answered(lambda: upload_call(r.stub, dataset, 8202, "killed-store-upload")))
        listed = r.stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).images
        assert sorted(i.name for i in listed) == sorted([kept.name, retried.name])
        assert b"".join(m.chunk for m in r.stub.ReadImage(pb.ReadImageRequest(name=kept.name))) == \
            image_bytes(seed=8201)


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            signal_all([cluster.postmaster_pid()], signal.SIGCONT)
        cluster.stop()


def test_a_hung_database_answers_unavailable_drains_and_heals(aio, tmp_path, own_postgres):
    url = own_postgres.create_database(f"hung_{uuid.uuid4().hex[:8]}")
    with rig(aio, tmp_path, url) as r:
        dataset = new_dataset(r.stub)
        paused = own_postgres.pause()
        try:
            code, dependency, retry = outage(r.stub.GetDataset, pb.GetDatasetRequest(name=dataset.name),
                                             timeout=CLIENT_DEADLINE)
            assert (code, dependency) == (grpc.StatusCode.UNAVAILABLE, "database")
            assert retry is not None
            assert outage(r.stub.CreateDataset, pb.CreateDatasetRequest(
                dataset=pb.Dataset(display_name="during", family=pb.MODEL_FAMILY_SD15), request_id="during-hang"),
                timeout=CLIENT_DEADLINE)[:2] == (grpc.StatusCode.UNAVAILABLE, "database")
            wait_for_health(r.channel, NOT_SERVING)
        finally:
            signal_all(paused, signal.SIGCONT)
        wait_for_health(r.channel, SERVING)
        assert r.stub.GetDataset(pb.GetDatasetRequest(name=dataset.name)).name == dataset.name
        # The write that was cut off committed at most once: its retry answers the same either way.
        request = pb.CreateDatasetRequest(dataset=pb.Dataset(display_name="during", family=pb.MODEL_FAMILY_SD15),
                                          request_id="during-hang")
        assert r.stub.CreateDataset(request) == r.stub.CreateDataset(request)
        named = [d for d in r.stub.ListDatasets(pb.ListDatasetsRequest(page_size=100)).datasets
                 if d.display_name == "during"]
        assert len(named) == 1


def test_a_killed_database_answers_unavailable_and_the_service_heals_when_it_is_back(aio, tmp_path, own_postgres):
    url = own_postgres.create_database(f"killed_{uuid.uuid4().hex[:8]}")
    with rig(aio, tmp_path, url) as r:
        dataset = new_dataset(r.stub)
        image = upload_call(r.stub, dataset, 8301)
        own_postgres.kill()
        code, dependency, _ = outage(r.stub.ListImages, pb.ListImagesRequest(parent=dataset.name),
                                     timeout=CLIENT_DEADLINE)
        assert (code, dependency) == (grpc.StatusCode.UNAVAILABLE, "database")
        wait_for_health(r.channel, NOT_SERVING)
        own_postgres.restart()
        wait_for_health(r.channel, SERVING)
        assert [i.name for i in r.stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).images] == [image.name]


def test_sigterm_exits_within_the_grace_period_while_the_object_store_hangs(tmp_path):
    s3 = EmbeddedS3(tmp_path / "s3", ACCESS_KEY, SECRET_KEY).start()
    grace = 3.0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_DATA_DIR=str(tmp_path / "data"), KILN_SERVER__PORT=str(port), KILN_JSON_LOGS="true",
               KILN_SERVER__SHUTDOWN_GRACE=str(grace), KILN_INTERNAL_AUTH__TOKEN=TEST_INTERNAL_TOKEN,
               KILN_S3__ENDPOINT=s3.endpoint, KILN_S3__ACCESS_KEY=ACCESS_KEY, KILN_S3__SECRET_KEY=SECRET_KEY,
               KILN_S3__BUCKET="sigterm", KILN_CROP_USE_DETECTOR="false",
               # Long ceilings: the calls stay stuck on the store for as long as it hangs.
               KILN_S3__CALL_TIMEOUT_SECONDS="600")
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "services.dataset"], env=env, stderr=stderr, text=True)
        assert s3.process is not None
        try:
            with internal_channel(f"127.0.0.1:{port}", TEST_AUTH) as channel:
                grpc.channel_ready_future(channel).result(timeout=90)
                stub = dataset_pb2_grpc.DatasetServiceStub(channel)
                dataset = new_dataset(stub)
                os.killpg(s3.process.pid, signal.SIGSTOP)
                wait_stopped(s3.process.pid)
                stuck = [stub.UploadImage.future(upload_messages(dataset.name, image_bytes(seed=8400 + n)))
                         for n in range(3)]
                wait_for_health(channel, NOT_SERVING)  # the service itself sees the store hang
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=grace + 1.0)
                for call in stuck:
                    assert call.exception(timeout=10) is not None
            stderr.seek(0)
            assert "termination signal received" in stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            os.killpg(s3.process.pid, signal.SIGCONT)
            s3.stop()
