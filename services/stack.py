"""`kiln up` / `python -m services.stack`: the whole of Kiln on one machine, on embedded defaults.

Starts, each as its own process: an S3 server (embedded SeaweedFS), the tagger service (the
built-in offline tagger), the dataset service (SQLite, every upload tagged and screened), the
trainer service (SQLite), its workers, and the gateway (the public API, gRPC and HTTP) on free
local ports, under one data folder, trusting each other through one token made for this run.
Creates an API key, prints where everything is, and runs until Ctrl-C or SIGTERM, or until one
of the processes dies; then stops them all, the gateway first, the object store last. The
services log to files under `<data-dir>/logs/`.

From Python: `with running_stack(data_dir) as stack:` gives `stack.grpc_address`,
`stack.http_address` and `stack.api_key`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.ports import free_ports
from services.stack_processes import ManagedProcess

DEFAULT_DATA_DIR = pathlib.Path("var/kiln")
TENANT = "local"
# The S3 credentials of the embedded server (it listens on loopback only).
S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET = "kiln", "kiln-secret-key", "kiln"
START_TIMEOUT = 180.0
# Seconds each service gets to finish in-flight calls when the stack stops.
SHUTDOWN_GRACE = 3.0
Report = Callable[[str], None]


class StackError(RuntimeError):
    """The stack could not start, or one of its processes died."""


def _quiet(_: str) -> None:
    pass


@dataclass
class Stack:
    """A running stack: where to reach it, the key to use, and its processes."""

    data_dir: pathlib.Path
    grpc_address: str = ""
    http_address: str = ""
    api_key: str = ""
    tenant: str = TENANT
    processes: list[ManagedProcess] = field(default_factory=list)
    guard: subprocess.Popen[str] | None = None
    # SeaweedFS, in a session of its own below the s3 process.
    s3_server_pid: int | None = None
    _changed: threading.Event = field(default_factory=threading.Event)
    _died: list[ManagedProcess] = field(default_factory=list)

    @property
    def logs_dir(self) -> pathlib.Path:
        return self.data_dir / "logs"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def guard_group(self, group: int) -> None:
        """Tell the guard a process group to end should the stack die."""
        if self.guard is not None and self.guard.stdin is not None:
            self.guard.stdin.write(f"group {group}\n")
            self.guard.stdin.flush()

    def on_exit(self, process: ManagedProcess) -> None:
        if not process.stopping:
            self._died.append(process)
            self._changed.set()

    def dead(self) -> ManagedProcess | None:
        """The first process that ended without being asked to, if any."""
        return self._died[0] if self._died else None

    def wait(self, timeout: float | None = None) -> ManagedProcess | None:
        """Block until one of the processes dies (returned) or `timeout` passes (None)."""
        self._changed.wait(timeout)
        return self.dead()

    def environment(self) -> dict[str, str]:
        """What a client needs: `export KILN_URL=… KILN_API_KEY=…`."""
        return {"KILN_URL": self.grpc_address, "KILN_API_KEY": self.api_key}

    @property
    def web_url(self) -> str:
        """The workbench, signed in: the key rides in the fragment, which the browser never sends."""
        return f"http://{self.http_address}/#key={self.api_key}"

    def describe(self) -> dict[str, object]:
        return {"grpc_address": self.grpc_address, "http_address": self.http_address, "web_url": self.web_url,
                "api_key": self.api_key,
                "tenant": self.tenant, "data_dir": str(self.data_dir), "logs_dir": str(self.logs_dir),
                "processes": {p.name: p.pid for p in self.processes}}


def base_environment(token: str, s3_endpoint: str, s3_secret_key: str = S3_SECRET_KEY) -> dict[str, str]:
    """What every service of a local stack (or cluster) is started with: the internal token, the
    object store, plain logs, no metrics port. Settings come from here only: KILN_ variables of the
    calling shell would point the stack's services elsewhere."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KILN_")}
    env.update({
        "KILN_INTERNAL_AUTH__TOKEN": token, "KILN_JSON_LOGS": "false", "KILN_LOG_LEVEL": "INFO",
        "KILN_METRICS__ENABLED": "false", "KILN_SERVER__SHUTDOWN_GRACE": str(SHUTDOWN_GRACE),
        "KILN_S3__ENDPOINT": s3_endpoint, "KILN_S3__ACCESS_KEY": S3_ACCESS_KEY,
        "KILN_S3__SECRET_KEY": s3_secret_key, "KILN_S3__BUCKET": S3_BUCKET,
        "PYTHONUNBUFFERED": "1",
    })
    return env


def serving(address: str) -> bool:
    """Whether the gRPC server at `address` says it serves (its health service)."""
    with grpc.insecure_channel(address) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # its stubs are untyped
        try:
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def _until(ready: Callable[[], bool], process: ManagedProcess, deadline: float) -> None:
    """Until `ready()` holds; fails at once when the process ends, or at the deadline."""
    while not ready():
        if process.returncode is not None:
            raise StackError(f"{process.name} exited with code {process.returncode} while starting; "
                             f"its log ({process.log_path}) ends:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise StackError(f"{process.name} was not serving after {START_TIMEOUT:.0f}s; see {process.log_path}")
        time.sleep(0.1)  # polling another process's port for readiness; it can't tell us


def _start_s3(stack: Stack, env: dict[str, str], deadline: float) -> str:
    s3_env = {**env, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    process = ManagedProcess("s3", [sys.executable, "-m", "services.stack_s3", str(stack.data_dir / "s3")], s3_env,
                             stack.logs_dir / "s3.log", stack.on_exit, stdout=subprocess.PIPE)
    stack.processes.append(process)
    stack.guard_group(process.pid)
    assert process.process.stdout is not None
    line = process.process.stdout.readline()  # one line once it serves, or EOF if it failed
    if not line:
        process.process.wait()
        raise StackError(f"the embedded S3 server did not start; its log ({process.log_path}) ends:\n"
                         f"{process.log_tail()}")
    if time.monotonic() > deadline:
        raise StackError("the embedded S3 server took too long to start")
    started = json.loads(line)
    stack.s3_server_pid = int(started["pid"])
    stack.guard_group(stack.s3_server_pid)  # SeaweedFS runs in a session of its own
    return str(started["endpoint"])


def _origin(endpoint: str) -> str:
    """scheme://host:port of the store's endpoint (host:port, reached over plain HTTP unless it names
    its scheme): the origin its presigned URLs have, which the workbench's policy must admit."""
    parts = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    return f"{parts.scheme}://{parts.netloc}"


def create_api_key(gateway_dir: pathlib.Path, tenant: str, database_url: str = "", label: str = "kiln up") -> str:
    """A first API key, written to the gateway's database as its `keys create` does (its SQLite file
    under the data folder, unless `database_url` names the one the gateway was given), named `label`
    and the time."""
    from services.gateway.api_keys import create_key
    from services.gateway.server import open_database
    from services.gateway.settings import GatewaySettings

    settings = GatewaySettings(data_dir=gateway_dir, gateway_database_url=database_url, json_logs=False)
    transactions = open_database(settings)
    try:
        with transactions.engine.begin() as conn:
            _, secret = create_key(conn, tenant, f"{label} {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S}",
                                   dt.datetime.now(dt.UTC))
    finally:
        transactions.close()
        transactions.engine.dispose()
    return secret


def _check_free(port: int, flag: str) -> None:
    if not port:
        return
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise StackError(f"{flag} {port}: the port is taken ({error.strerror}); pick another, or 0 for a "
                             "free one") from None


def _start(stack: Stack, grpc_port: int, http_port: int | None, workers: int, models_dir: pathlib.Path | None,
           worker_env: dict[str, str], service_env: Mapping[str, Mapping[str, str]], report: Report) -> None:
    _check_free(grpc_port, "--grpc-port")
    if http_port:
        _check_free(http_port, "--http-port")
    deadline = time.monotonic() + START_TIMEOUT
    token = secrets.token_urlsafe(32)
    stack.data_dir.mkdir(parents=True, exist_ok=True)
    # Outlives the stack if it is killed, and then ends what the stack started.
    stack.guard = subprocess.Popen([sys.executable, "-m", "services.stack_guard"], stdin=subprocess.PIPE,
                                   text=True, start_new_session=True)
    report(f"starting the object store (embedded SeaweedFS) in {stack.data_dir / 's3'}")
    env = base_environment(token, "")
    s3_endpoint = _start_s3(stack, env, deadline)
    env = base_environment(token, s3_endpoint)
    if models_dir is not None:
        env["KILN_MODELS_DIR"] = str(models_dir.resolve())

    tagger_port, dataset_port, trainer_port, *picked = free_ports(5)
    grpc_port = grpc_port or picked[0]
    http_port = http_port or picked[1]
    addresses = {name: f"127.0.0.1:{port}" for name, port in
                 (("tagger", tagger_port), ("dataset", dataset_port), ("trainer", trainer_port),
                  ("gateway", grpc_port))}

    def service(name: str, module: list[str], **settings: str) -> ManagedProcess:
        process_env = {**env, "KILN_DATA_DIR": str((stack.data_dir / name).resolve()),
                       **{f"KILN_{key.upper()}": value for key, value in settings.items()},
                       **service_env.get(name, {})}
        process = ManagedProcess(name, [sys.executable, "-m", *module], process_env, stack.logs_dir / f"{name}.log",
                                 stack.on_exit)
        stack.processes.append(process)
        stack.guard_group(process.pid)
        return process

    # All at once: their imports take most of the start-up, and each waits for what it calls.
    report("starting the tagger, dataset, trainer and gateway services and "
           f"{workers} worker{'s' if workers != 1 else ''}")
    started = [
        service("tagger", ["services.tagger", "serve"], server__port=str(tagger_port)),
        service("dataset", ["services.dataset"], server__port=str(dataset_port),
                tagger_address=addresses["tagger"]),
        service("trainer", ["services.trainer"], server__port=str(trainer_port),
                dataset_address=addresses["dataset"]),
    ]
    for index in range(workers):
        service(f"worker-{index + 1}", ["services.trainer.worker"], trainer_address=addresses["trainer"],
                worker_id=f"local-{index + 1}", **{k.removeprefix("KILN_").lower(): v for k, v in worker_env.items()})
    gateway = service("gateway", ["services.gateway"], server__port=str(grpc_port), http__port=str(http_port),
                      dataset_address=addresses["dataset"], trainer_address=addresses["trainer"],
                      web_store_origins=json.dumps([_origin(s3_endpoint)]))
    for process in [*started, gateway]:
        _until(lambda address=addresses[process.name]: serving(address), process, deadline)  # type: ignore[misc]
        report(f"  {process.name:8s} serving on {addresses[process.name]}")
    stack.grpc_address = addresses["gateway"]
    http_address = f"127.0.0.1:{http_port}"
    _until(lambda: _port_open(http_address), gateway, deadline)
    stack.http_address = http_address
    stack.api_key = create_api_key((stack.data_dir / "gateway").resolve(), stack.tenant,
                                service_env.get("gateway", {}).get("KILN_GATEWAY_DATABASE_URL", ""))


def _stop(stack: Stack, report: Report) -> None:
    # The public edge first, so nothing new comes in; the object store last, as everything uses it.
    order = {"gateway": 0, "worker": 1, "trainer": 2, "dataset": 3, "tagger": 4, "s3": 5}
    for process in sorted(stack.processes, key=lambda p: order[p.name.split("-")[0]]):
        if process.returncode is None:
            report(f"  stopping {process.name}")
        code = process.stop(grace=SHUTDOWN_GRACE + 10)
        if process.name == "s3" and code != 0 and stack.s3_server_pid is not None:
            # It did not stop SeaweedFS itself.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(stack.s3_server_pid, signal.SIGKILL)
    if stack.guard is not None:
        with contextlib.suppress(BrokenPipeError):
            assert stack.guard.stdin is not None
            stack.guard.stdin.write("done\n")
            stack.guard.stdin.close()
        stack.guard.wait()


@contextlib.contextmanager
def running_stack(data_dir: pathlib.Path = DEFAULT_DATA_DIR, *, grpc_port: int = 0, http_port: int = 0,
                  workers: int = 1, models_dir: pathlib.Path | None = None,
                  worker_env: dict[str, str] | None = None,
                  service_env: Mapping[str, Mapping[str, str]] | None = None,
                  report: Report = _quiet) -> Iterator[Stack]:
    """The whole stack as processes, serving, until the block ends; then every process is stopped.

    Ports 0 are picked free. `models_dir`: the base-model store (default: the services' own,
    ~/.cache/kiln/models). `worker_env`: extra KILN_ settings of the workers; `service_env`: extra
    KILN_ settings of a service by its name ("tagger", "dataset", "trainer", "gateway"), e.g. the
    tagger's moderation policy, over the stack's own. `report` is told what
    happens, a line at a time. Call it from the thread that outlives the stack (the main thread):
    the processes are told to stop when the thread that started them ends."""
    stack = Stack(data_dir=data_dir)
    try:
        _start(stack, grpc_port, http_port, workers, models_dir, worker_env or {}, service_env or {}, report)
        yield stack
    finally:
        _stop(stack, report)


def _print_ready(stack: Stack) -> None:
    print(f"Kiln is running (data in {stack.data_dir}, service logs in {stack.logs_dir})")
    print(f"  gRPC  {stack.grpc_address}")
    print(f"  HTTP  http://{stack.http_address}  (Connect protocol, JSON or binary)")
    print(f"  Web   {stack.web_url}  (the workbench, signed in with the key below)")
    print(f"  API key for tenant {stack.tenant!r} (shown once): {stack.api_key}")
    print("Use it from another shell:")
    print(f"  export KILN_URL={stack.grpc_address} KILN_API_KEY={stack.api_key}")
    print("Ctrl-C stops everything.", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln up", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=pathlib.Path, default=DEFAULT_DATA_DIR,
                        help=f"where the object store, databases and logs live (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--grpc-port", type=int, default=0, help="the gateway's gRPC port (default: a free one)")
    parser.add_argument("--http-port", type=int, default=0, help="the gateway's HTTP port (default: a free one)")
    parser.add_argument("--workers", type=int, default=1, help="training workers (default 1)")
    parser.add_argument("--models-dir", type=pathlib.Path, default=None,
                        help="base-model store (default: $KILN_MODELS_DIR or ~/.cache/kiln/models)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line with the addresses and the key once serving (progress on stderr)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 0:
        print("error: --workers must be 0 or more", file=sys.stderr)
        return 2
    models_dir = args.models_dir
    if models_dir is None and os.environ.get("KILN_MODELS_DIR"):
        models_dir = pathlib.Path(os.environ["KILN_MODELS_DIR"])

    def report(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    # SIGTERM ends the stack as Ctrl-C does; SIGINT too when started where it was ignored (`… &`).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.default_int_handler)
    try:
        with running_stack(args.data_dir, grpc_port=args.grpc_port, http_port=args.http_port,
                           workers=args.workers, models_dir=models_dir, report=report) as stack:
            if args.json:
                print(json.dumps(stack.describe()), flush=True)
            else:
                _print_ready(stack)
            dead = stack.wait()
            assert dead is not None
            report(f"{dead.name} exited with code {dead.returncode}; stopping the rest. Its log "
                   f"({dead.log_path}) ends:\n{dead.log_tail()}")
            return 1
    except KeyboardInterrupt:
        report("stopped")
        return 0
    except StackError as error:
        report(f"error: {error}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
