"""A backup of a running Kiln on PostgreSQL and an S3 store (`python -m services.backup create`),
taken while it serves, brings back every dataset, image, caption, snapshot, job (state, epochs,
events), artifact, model and API key once the databases and the bucket are gone and it is
restored (`… restore`) into fresh ones: the public API then answers as before, byte for byte."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Mapping

import psycopg
import pytest

from kiln import Client
from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as tpb
from services.common.database import create_engine
from services.common.embedded_s3 import EmbeddedS3
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings
from services.dataset.server import SCHEMA as DATASET
from services.gateway.api_keys import create_key, list_keys
from services.gateway.server import SCHEMA as GATEWAY
from services.stack import running_stack
from services.trainer.server import SCHEMA as TRAINER
from tests.conftest import ACCESS_KEY, SECRET_KEY
from tests.servers import PostgresCluster
from tests.web import samples
from tests.web.training_jobs import PRESET, fast_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATABASES = ("dataset", "trainer", "gateway")
TRIGGER = "bkptrigger"
State = tpb.TrainingJob.State


class Deployment:
    """Where one incarnation of Kiln keeps its records and bytes: a database per service on the
    test's PostgreSQL, and a bucket on the test's S3 server."""

    def __init__(self, postgres: PostgresCluster, s3: EmbeddedS3, label: str) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.postgres = postgres
        self.names = {service: f"{service}_{label}_{suffix}" for service in DATABASES}
        self.urls = {service: postgres.create_database(name) for service, name in self.names.items()}
        self.s3 = ObjectStoreSettings(endpoint=s3.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                                      bucket=f"kiln-{label}-{suffix}")

    def env(self) -> dict[str, str]:
        """The KILN_ settings every service, worker and the backup tool read."""
        return {"KILN_S3__ENDPOINT": self.s3.endpoint, "KILN_S3__ACCESS_KEY": self.s3.access_key,
                "KILN_S3__SECRET_KEY": self.s3.secret_key.get_secret_value(), "KILN_S3__BUCKET": self.s3.bucket,
                **{f"KILN_{service.upper()}_DATABASE_URL": url for service, url in self.urls.items()}}

    def service_env(self) -> Mapping[str, Mapping[str, str]]:
        return {service: self.env() for service in ("tagger", *DATABASES)}

    def store(self) -> ObjectStore:
        return ObjectStore(self.s3)

    def wipe(self) -> None:
        """Drop the databases and delete the bucket, as a lost server would."""
        with psycopg.connect(self.postgres.url(), autocommit=True) as conn:
            for name in self.names.values():
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        store = self.store()
        store.delete_prefix("")
        store.client.remove_bucket(bucket_name=self.s3.bucket)


def backup_tool(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("KILN_")}
    return subprocess.run([sys.executable, "-m", "services.backup", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=300, check=False)


def read_image(client: Client, name: str) -> bytes:
    return b"".join(r.chunk for r in client.datasets.ReadImage(dpb.ReadImageRequest(name=name))
                    if r.WhichOneof("content") == "chunk")


def read_artifact(client: Client, name: str) -> bytes:
    return b"".join(r.chunk for r in client.trainer.ReadArtifact(tpb.ReadArtifactRequest(name=name))
                    if r.WhichOneof("content") == "chunk")


def everything(client: Client) -> dict[str, object]:
    """What the public API shows of the tenant: every record as its message, every byte it serves."""
    datasets = sorted(client.list_datasets(), key=lambda d: d.name)
    images = {d.name: sorted(client.list_images(d.name), key=lambda i: i.name) for d in datasets}
    snapshots = {d.name: list(client.datasets.ListSnapshots(dpb.ListSnapshotsRequest(parent=d.name)).snapshots)
                 for d in datasets}
    jobs = sorted(client.trainer.ListTrainingJobs(tpb.ListTrainingJobsRequest(page_size=100)).training_jobs,
                  key=lambda j: j.name)
    models = sorted(client.trainer.ListModels(tpb.ListModelsRequest(page_size=100)).models, key=lambda m: m.name)
    artifacts = [result.lora.name for job in jobs for result in job.epochs]
    artifacts += [preview.image.name for job in jobs for result in job.epochs for preview in result.previews]
    artifacts += [model.file.name for model in models] + [shown.name for model in models for shown in model.showcase]
    return {
        "datasets": datasets, "images": images, "snapshots": snapshots, "jobs": jobs, "models": models,
        "image bytes": {i.name: read_image(client, i.name) for listed in images.values() for i in listed},
        "events": {job.name: list(client.watch_job(job.name)) for job in jobs},
        "artifact bytes": {name: read_artifact(client, name) for name in sorted(artifacts)},
    }


def test_a_restore_into_fresh_databases_and_bucket_brings_everything_back(postgres, s3_server, models_dir, tmp_path):
    before = Deployment(postgres, s3_server, "before")
    before.store().ensure_bucket()
    with running_stack(tmp_path / "first", models_dir=models_dir, service_env=before.service_env(),
                       worker_env=before.env()) as stack, Client(stack.grpc_address, stack.api_key) as client:
        dataset = samples.dataset_of_samples(client, "Backed up", samples.first_samples(3), head_tag=TRIGGER)
        first_image = next(client.list_images(dataset)).name
        client.add_tag(dataset, "only-this-one", images=[first_image])
        job = client.create_job(dataset, PRESET, epochs=2, repeat=1, preview_prompt=f"{TRIGGER}, smile",
                                config=fast_config(), display_name="Backed up job")
        finished = client.wait_for_job(job.name, progress=False)
        assert finished.state == State.STATE_SUCCEEDED and len(finished.epochs) == 2
        client.publish_model(job.name, 2, "Backed up model", trigger_words=[TRIGGER], showcase_previews=[0])
        seen = everything(client)
        # Taken while the stack serves, as an operator's nightly backup is.
        backup = backup_tool("create", str(tmp_path / "backup"), "--no-progress", env=before.env())
        assert backup.returncode == 0, backup.stderr
        old_key = stack.api_key
    assert "backed up 3 databases" in backup.stdout
    assert seen["images"][dataset][0].tags[0] == TRIGGER
    # Two LoRAs and four previews each, and the model's file and showcase preview.
    assert len(seen["artifact bytes"]) == 2 + 2 * 4 + 2

    before.wipe()
    after = Deployment(postgres, s3_server, "after")
    restored = backup_tool("restore", str(tmp_path / "backup"), "--no-progress", env=after.env())
    assert restored.returncode == 0, restored.stderr
    assert "restored 3 databases" in restored.stdout
    # Not twice: the targets hold data now.
    again = backup_tool("restore", str(tmp_path / "backup"), "--no-progress", env=after.env())
    assert again.returncode == 2 and "already has tables" in again.stderr and "--force" in again.stderr

    with running_stack(tmp_path / "second", models_dir=models_dir, service_env=after.service_env(),
                       worker_env=after.env()) as stack, Client(stack.grpc_address, old_key) as client:
        # The key from before the loss still works: the gateway's keys came back too.
        assert everything(client) == seen


@pytest.mark.parametrize("problem", ["no store", "no pg_dump", "not a backup"])
def test_the_tool_says_what_is_wrong_and_exits_2(postgres, s3_server, tmp_path, problem):
    deployment = Deployment(postgres, s3_server, "faulty")
    env = deployment.env()
    command = ["create", str(tmp_path / "backup")]
    says = {"no store": "can't reach the object store", "no pg_dump": "pg_dump not found on PATH",
            "not a backup": "is not a complete backup"}[problem]
    if problem == "no store":
        env["KILN_S3__ENDPOINT"] = "127.0.0.1:1"
    elif problem == "no pg_dump":
        deployment.store().ensure_bucket()
        env["PATH"] = str(pathlib.Path(sys.executable).parent)
    else:
        command = ["restore", str(tmp_path)]
    result = backup_tool(*command, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error: ") and says in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "backup").exists()


MANIFESTS = {
    "not JSON": '{"format": 1, "created": ',
    "not an object": "[1]",
    "missing keys": '{"format": 1, "created": "2026-01-01T00:00:00+00:00", "bucket": "kiln"}',
    "an entry that does not fit": json.dumps({"format": 1, "created": "x", "bucket": "kiln", "databases": [],
                                              "objects": [{"key": "a"}]}),
}


@pytest.mark.parametrize("problem", sorted(MANIFESTS))
def test_a_restore_of_a_damaged_manifest_says_so_and_exits_2(tmp_path, problem):
    (tmp_path / "manifest.json").write_text(MANIFESTS[problem])
    result = backup_tool("restore", str(tmp_path), env={"KILN_S3__ENDPOINT": "127.0.0.1:1"})
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {tmp_path / 'manifest.json'} is damaged (")
    assert "restore another backup, or `create` a new one" in result.stderr


def test_a_backup_into_a_file_is_refused_with_exit_2(tmp_path):
    (tmp_path / "a-file").write_text("kept")
    result = backup_tool("create", str(tmp_path / "a-file"), env={"KILN_S3__ENDPOINT": "127.0.0.1:1"})
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'a-file'} is a file, not a folder: back up into a new folder\n"
    assert (tmp_path / "a-file").read_text() == "kept"


@pytest.mark.parametrize("command", ["create", "restore"])
def test_without_an_object_store_the_tool_says_which_setting_to_set(tmp_path, command):
    result = backup_tool(command, str(tmp_path / "backup"), env={})
    assert result.returncode == 2
    assert result.stderr.startswith("error: KILN_S3__ENDPOINT is not set: set it ")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("variable", "value", "shown"), [
    ("KILN_S3__BUCKET", "Not_A_Bucket", "KILN_S3__BUCKET"),
    ("KILN_S3__CALL_TIMEOUT_SECONDS", "0", "KILN_S3__CALL_TIMEOUT_SECONDS"),
])
def test_a_bad_setting_is_named_with_exit_2(tmp_path, variable, value, shown):
    result = backup_tool("create", str(tmp_path / "backup"), env={"KILN_S3__ENDPOINT": "127.0.0.1:1", variable: value})
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: bad setting {shown}: ") and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_postgres_scheme_is_refused_without_showing_the_password(tmp_path):
    result = backup_tool("create", str(tmp_path / "backup"), env={
        "KILN_S3__ENDPOINT": "127.0.0.1:1", "KILN_DATASET_DATABASE_URL": "postgres://kiln:s3cretpw@db/kiln"})
    assert result.returncode == 2
    assert result.stderr == "error: postgres://kiln:***@db/kiln: write postgresql:// instead of postgres://\n"


def test_services_sharing_one_database_are_dumped_once_and_restored_together(postgres, s3_server, tmp_path):
    """The one-host compose file gives every service one database: one archive holds them all."""
    source = Deployment(postgres, s3_server, "shared")
    shared = source.urls["dataset"]
    engine = create_engine(shared)
    try:
        for schema in (DATASET, TRAINER, GATEWAY):
            schema.upgrade(engine)
        with engine.begin() as conn:
            create_key(conn, "shared-tenant", "kept", dt.datetime.now(dt.UTC))
    finally:
        engine.dispose()
    source.store().ensure_bucket()
    env = {**source.env(), **{f"KILN_{service.upper()}_DATABASE_URL": shared for service in DATABASES}}
    backup = backup_tool("create", str(tmp_path / "backup"), "--no-progress", env=env)
    assert backup.returncode == 0, backup.stderr
    assert sorted(p.name for p in (tmp_path / "backup" / "databases").iterdir()) == ["gateway+trainer+dataset.dump"]

    target = Deployment(postgres, s3_server, "sharedrestore")
    into = target.urls["trainer"]
    restored = backup_tool("restore", str(tmp_path / "backup"), "--no-progress",
                           env={**target.env(), **{f"KILN_{s.upper()}_DATABASE_URL": into for s in DATABASES}})
    assert restored.returncode == 0, restored.stderr
    engine = create_engine(into)
    try:
        for schema in (DATASET, TRAINER, GATEWAY):
            assert schema.require_current(engine) == schema.head()
        with engine.connect() as conn:
            assert [key.name for key in list_keys(conn, "shared-tenant")] == ["kept"]
    finally:
        engine.dispose()
