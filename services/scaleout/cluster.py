"""A cluster shaped like production, on this machine: every part its own process on its own test
host. A distributed SeaweedFS (master, two volume servers, filer, S3 gateway), PostgreSQL (one
database per service), the tagger, two dataset-service replicas, two trainer-service replicas,
three training workers and the gateway. Replicas are reached as production reaches them: callers
hold every replica's address and spread calls round-robin, so one that dies costs only the calls
in flight to it. Parts can be killed (SIGKILL) and started again while the cluster runs."""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from services import stack
from services.scaleout.hosts import Network, cluster_hosts
from services.scaleout.postgres import PostgresServer
from services.scaleout.seaweed import HOSTS as STORE_HOSTS
from services.scaleout.seaweed import DistributedStore
from services.stack_processes import ManagedProcess

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRPC_PORT, HTTP_PORT = 50051, 8080
Report = Callable[[str], None]


@dataclass(frozen=True)
class Shape:
    dataset_replicas: int = 2
    trainer_replicas: int = 2
    workers: int = 3
    # How long a worker that stopped reporting keeps its job (a kill -9 costs this much).
    lease_seconds: float = 6.0
    max_running_jobs_per_tenant: int = 2
    # Whether each part gets a network namespace of its own (None: where they can be made).
    namespaces: bool | None = None


@dataclass
class Service:
    """One service process: how to start it again after it was killed."""

    name: str
    module: list[str]
    env: dict[str, str]
    address: str
    process: ManagedProcess | None = None


@dataclass
class Cluster:
    root: pathlib.Path
    shape: Shape
    network: Network
    store: DistributedStore
    postgres: PostgresServer
    report: Report
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    services: dict[str, Service] = field(default_factory=dict)
    database_urls: dict[str, str] = field(default_factory=dict)
    models_dir: pathlib.Path = field(default_factory=pathlib.Path)
    # Parts that ended without being asked to (a kill the proof did is asked for: see `kill`).
    unexpected_exits: list[str] = field(default_factory=list)
    _stopping: bool = False
    _asked: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def gateway_address(self) -> str:
        return self.services["gateway"].address

    def addresses(self, prefix: str) -> str:
        """Every replica of a service, as a list its callers take."""
        return ",".join(s.address for name, s in sorted(self.services.items()) if name.startswith(prefix))

    def on_exit(self, process: ManagedProcess) -> None:
        with self._lock:
            if not (self._stopping or process.stopping or process.pid in self._asked):
                self.unexpected_exits.append(f"{process.name} (pid {process.pid}) exited with code "
                                             f"{process.returncode}")

    # ------------------------------------------------------------------ parts

    def _environment(self, name: str, **settings: str) -> dict[str, str]:
        env = stack.base_environment(self.token, self.store.endpoint, self.store.secret_key)
        env.update({
            "KILN_MODELS_DIR": str(self.models_dir), "KILN_DATA_DIR": str(self.root / "data" / name),
            # Two cores for everything: one thread per process.
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "KILN_MIGRATE_ON_START": "false",
        })
        env.update({f"KILN_{key.upper()}": value for key, value in settings.items()})
        return env

    def _add(self, name: str, module: list[str], port: int, **settings: str) -> Service:
        host = self.network.hosts[name]
        address = host.at(port)
        service = Service(name, module, self._environment(name, server__host=host.address, server__port=str(port),
                                                          **settings), address)
        self.services[name] = service
        return service

    def start_service(self, name: str) -> ManagedProcess:
        service = self.services[name]
        argv = self.network.hosts[name].argv([sys.executable, "-m", *service.module])
        service.process = ManagedProcess(name, argv, service.env, self.root / "logs" / f"{name}.log", self.on_exit,
                                         cwd=ROOT)
        return service.process

    def kill(self, name: str) -> None:
        """kill -9 a service, as a machine that loses power would; what it started goes with it."""
        process = self.services[name].process
        assert process is not None
        self.kill_process(process)

    def kill_process(self, process: ManagedProcess) -> None:
        with self._lock:
            self._asked.add(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.process.wait()

    def wait_serving(self, names: list[str], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            service = self.services[name]
            while not stack.serving(service.address):
                process = service.process
                if process is not None and process.returncode is not None:
                    raise RuntimeError(f"{name} exited with code {process.returncode} while starting; its log "
                                       f"({process.log_path}) ends:\n{process.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} was not serving after {timeout:.0f}s; see {self.root / 'logs'}")
                time.sleep(0.1)  # polling another process's health; it can't tell us

    def stop(self) -> None:
        self._stopping = True
        order = ("gateway", "worker", "trainer", "dataset", "tagger")
        for prefix in order:
            for name, service in self.services.items():
                if name.startswith(prefix) and service.process is not None:
                    service.process.stop(grace=10)
        self.postgres.stop()
        self.store.stop()


def host_names(shape: Shape) -> list[str]:
    return [*STORE_HOSTS, "database", "tagger", *(f"dataset-{i + 1}" for i in range(shape.dataset_replicas)),
            *(f"trainer-{i + 1}" for i in range(shape.trainer_replicas)),
            *(f"worker-{i + 1}" for i in range(shape.workers)), "gateway"]


def _migrate(cluster: Cluster) -> None:
    """The step a deployment runs before its services (which then never migrate on their own)."""
    host = cluster.network.hosts["gateway"]
    for service in ("dataset", "trainer", "gateway"):
        env = cluster._environment(f"migrate-{service}", **{f"{service}_database_url": cluster.database_urls[service]})
        done = subprocess.run(host.argv([sys.executable, "-m", f"services.{service}", "migrate"]), env=env, cwd=ROOT,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`python -m services.{service} migrate` failed:\n{done.stdout}{done.stderr}")
        cluster.report(f"  {done.stdout.strip()}")


def _start(cluster: Cluster, shape: Shape) -> None:
    report = cluster.report
    network = cluster.network
    report(f"hosts: {len(network.hosts)} on {network.kind} (this process at {network.own_address})")
    report("starting the distributed object store (master, 2 volume servers, filer, S3 gateway)")
    cluster.store.start()
    report(f"  S3 at {cluster.store.endpoint}")
    report("starting PostgreSQL")
    cluster.postgres.initialise()
    cluster.postgres.start()
    cluster.database_urls = {name: cluster.postgres.create_database(f"kiln_{name}")
                             for name in ("dataset", "trainer", "gateway")}
    report(f"  at {cluster.postgres.host.address}:{cluster.postgres.port}")
    hosts = network.hosts
    cluster._add("tagger", ["services.tagger", "serve"], hosts["tagger"].port(GRPC_PORT))
    for index in range(shape.dataset_replicas):
        name = f"dataset-{index + 1}"
        cluster._add(name, ["services.dataset"], hosts[name].port(GRPC_PORT),
                     dataset_database_url=cluster.database_urls["dataset"],
                     tagger_address=cluster.services["tagger"].address)
    for index in range(shape.trainer_replicas):
        name = f"trainer-{index + 1}"
        cluster._add(name, ["services.trainer"], hosts[name].port(GRPC_PORT),
                     trainer_database_url=cluster.database_urls["trainer"],
                     dataset_address=cluster.addresses("dataset"),
                     training_lease_seconds=str(shape.lease_seconds), queue_maintenance_seconds="1",
                     watch_poll_seconds="0.5", max_running_jobs_per_tenant=str(shape.max_running_jobs_per_tenant),
                     # The webhook receivers are on the hosts' private network.
                     webhook_allow_private_networks="true", webhook_retry_schedule="[0, 1, 2, 4, 8]",
                     webhook_retry_jitter="0", webhook_timeout_seconds="4", webhook_lease_seconds="10")
    for index in range(shape.workers):
        name = f"worker-{index + 1}"
        cluster._add(name, ["services.trainer.worker"], 0, trainer_address=cluster.addresses("trainer"),
                     worker_id=name, claim_wait_seconds="2", heartbeat_seconds="1")
        del cluster.services[name].env["KILN_SERVER__PORT"]
    gateway_host = hosts["gateway"]
    cluster._add("gateway", ["services.gateway"], gateway_host.port(GRPC_PORT),
                 gateway_database_url=cluster.database_urls["gateway"], dataset_address=cluster.addresses("dataset"),
                 trainer_address=cluster.addresses("trainer"), http__host=gateway_host.address,
                 http__port=str(gateway_host.port(HTTP_PORT)), web_dir="off",
                 key_requests_per_second="500", key_request_burst="1000")
    _migrate(cluster)
    report(f"starting {', '.join(cluster.services)}")
    for name in cluster.services:
        cluster.start_service(name)
    cluster.wait_serving([name for name in cluster.services if not name.startswith("worker")])
    for name, service in cluster.services.items():
        report(f"  {name:10s} {service.address if not name.startswith('worker') else '(worker)'}")


@contextlib.contextmanager
def running_cluster(root: pathlib.Path, shape: Shape = Shape(), report: Report = lambda _: None
                    ) -> Iterator[Cluster]:
    """The cluster, serving, until the block ends. Call it from the thread that outlives it: its
    processes are told to stop when the thread that started them ends."""
    root.mkdir(parents=True, exist_ok=True)
    with cluster_hosts(host_names(shape), shape.namespaces) as network:
        holder: list[Cluster] = []

        def on_exit(process: ManagedProcess) -> None:
            if holder:
                holder[0].on_exit(process)

        store = DistributedStore(network.hosts, root / "s3", stack.S3_ACCESS_KEY, secrets.token_urlsafe(24),
                                 stack.S3_BUCKET, on_exit)
        postgres = PostgresServer(network.hosts["database"], on_exit)
        cluster = Cluster(root, shape, network, store, postgres, report, models_dir=root / "models")
        holder.append(cluster)
        try:
            _start(cluster, shape)
            yield cluster
        finally:
            cluster.stop()
            postgres.remove(root / "logs" / "postgres.log")


def create_api_key(cluster: Cluster, tenant: str) -> str:
    """An API key for `tenant`, written to the gateway's database as `kiln keys create` does."""
    return stack.create_api_key(cluster.root / "keys", tenant, cluster.database_urls["gateway"], "scale-out proof")
