"""A distributed SeaweedFS, each component its own process on its own host, as in production: a
master, two volume servers holding every volume twice (replication 001: a volume server can be lost
without losing an object), a filer and the S3 gateway in front of it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import minio
import urllib3

from services.common.embedded_s3 import weed_binary
from services.scaleout.hosts import Host
from services.stack_processes import ManagedProcess

MASTER_PORT, VOLUME_PORT, FILER_PORT, S3_PORT = 9333, 8080, 8888, 8333
HOSTS = ("store-master", "store-volume-1", "store-volume-2", "store-filer", "store-s3")
VOLUMES = ("store-volume-1", "store-volume-2")


@dataclass
class DistributedStore:
    hosts: Mapping[str, Host]
    root: pathlib.Path
    access_key: str
    secret_key: str
    bucket: str
    on_exit: Callable[[ManagedProcess], None]
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.hosts["store-s3"].at(self.ports["store-s3"])

    def client(self) -> minio.Minio:
        # One attempt per call: the caller's own loop decides how long to keep trying.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)
        return minio.Minio(endpoint=self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                           secure=False, http_client=http)

    def _argv(self, name: str) -> list[str]:
        host, port = self.hosts[name], self.ports[name]
        master = self.hosts["store-master"].at(self.ports["store-master"])
        common = [f"-ip={host.address}", f"-ip.bind={host.address}", f"-port={port}", f"-port.grpc={port + 10000}"]
        folder = self.root / name
        if name == "store-master":
            return ["master", *common, f"-mdir={folder}", "-defaultReplication=001", "-volumeSizeLimitMB=64",
                    "-telemetry=false"]
        if name in VOLUMES:
            return ["volume", *common, f"-dir={folder}", f"-master={master}", "-max=32"]
        if name == "store-filer":
            return ["filer", *common, f"-master={master}", f"-defaultStoreDir={folder}"]
        return ["s3", f"-ip.bind={host.address}", f"-port={port}", f"-port.grpc={port + 10000}",
                f"-filer={self.hosts['store-filer'].at(self.ports['store-filer'])}",
                f"-config={self.root / 's3.json'}", "-port.iceberg=0", "-port.lance=0"]

    def start(self, timeout: float = 90.0) -> None:
        usual = {"store-master": MASTER_PORT, "store-volume-1": VOLUME_PORT, "store-volume-2": VOLUME_PORT,
                 "store-filer": FILER_PORT, "store-s3": S3_PORT}
        self.ports = {name: self.hosts[name].port(usual[name]) for name in HOSTS}
        identities = {"identities": [{"name": "kiln", "credentials": [
            {"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "s3.json").write_text(json.dumps(identities))
        for name in HOSTS:
            self.start_part(name)
        deadline = time.monotonic() + timeout
        while not self.writable():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the distributed store took no writes within {timeout:.0f}s; logs in {self.root}")
            time.sleep(0.2)  # polling the store until its parts have found each other

    def start_part(self, name: str) -> ManagedProcess:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        argv = self.hosts[name].argv([weed_binary(), *self._argv(name)])
        process = ManagedProcess(name, argv, dict(os.environ), self.root / f"{name}.log", self.on_exit,
                                 cwd=self.root / name)
        self.processes[name] = process
        return process

    def writable(self) -> bool:
        """Whether an object can be written (and the bucket exists) now."""
        client = self.client()
        try:
            if not client.bucket_exists(bucket_name=self.bucket):
                client.make_bucket(bucket_name=self.bucket)
            payload = os.urandom(64)
            client.put_object(bucket_name=self.bucket, object_name="health/probe", data=io.BytesIO(payload),
                              length=len(payload))
            client.remove_object(bucket_name=self.bucket, object_name="health/probe")
        except (minio.error.MinioException, urllib3.exceptions.HTTPError, OSError):
            return False
        return True

    def stop(self) -> None:
        """At once: the cluster is thrown away, and its parts take seconds to stop politely."""
        for name in reversed(HOSTS):
            process = self.processes.get(name)
            if process is not None:
                process.stopping = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.stop(grace=5)
