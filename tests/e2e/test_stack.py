"""The whole stack as processes (`kiln up`, `python -m services.stack`, `running_stack`): it serves
through the gateway with the key it made, and however it ends, nothing it started is left."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import grpc
import httpx
import pytest

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import dataset_pb2_grpc
from services.stack import running_stack
from tests.e2e.processes import survivors, tree

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICES = ["s3", "tagger", "dataset", "trainer", "worker-1", "gateway"]


def list_datasets(address: str, key: str) -> dpb.ListDatasetsResponse:
    with grpc.insecure_channel(address) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        return stub.ListDatasets(dpb.ListDatasetsRequest(), metadata=(("authorization", f"Bearer {key}"),),
                                 timeout=30)


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    # Two cores for the whole run: one thread per service process.
    return {key: value for key, value in os.environ.items() if not key.startswith("KILN_")} | {"OMP_NUM_THREADS": "1"}


def test_running_stack_serves_through_the_gateway_and_leaves_nothing(tmp_path, models_dir):
    with running_stack(tmp_path / "kiln", models_dir=models_dir) as stack:
        assert [p.name for p in stack.processes] == SERVICES
        started = tree(stack.pids)
        # The worker's training process and SeaweedFS run below the stack's own children.
        assert len(started) > len(SERVICES)
        assert stack.api_key.startswith("kiln_")
        assert list_datasets(stack.grpc_address, stack.api_key).datasets == []
        with pytest.raises(grpc.RpcError) as caught:
            list_datasets(stack.grpc_address, stack.api_key + "x")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stack.environment() == {"KILN_URL": stack.grpc_address, "KILN_API_KEY": stack.api_key}
        # The HTTP side answers on its own port.
        assert httpx.get(f"http://{stack.http_address}/healthz", timeout=10).status_code == 200
        assert stack.dead() is None
        for name in ("gateway", "dataset", "trainer", "tagger"):
            assert (stack.logs_dir / f"{name}.log").stat().st_size > 0
        # A process that dies is told.
        tagger = next(p for p in stack.processes if p.name == "tagger")
        os.kill(tagger.pid, signal.SIGKILL)
        assert stack.wait(timeout=30) is tagger
        assert tagger.returncode == -signal.SIGKILL
    assert survivors(started) == []


@pytest.fixture
def stack_cli(tmp_path: pathlib.Path, models_dir: pathlib.Path, stack_env: dict[str, str],
              request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], dict]]:
    """`python -m services.stack --json` serving, and what it printed."""
    workers = getattr(request, "param", 1)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.stack", "--json", "--data-dir", str(tmp_path / "kiln"),
         "--models-dir", str(models_dir), "--workers", str(workers)],
        cwd=ROOT, env=stack_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, process.stderr.read() if process.stderr else ""
        yield process, json.loads(line)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.parametrize(("sig", "stack_cli", "workers"), [(signal.SIGTERM, 1, 1), (signal.SIGINT, 0, 0)],
                         indirect=["stack_cli"])
def test_the_command_stops_everything_in_order_on_a_signal(stack_cli, sig, workers):
    process, described = stack_cli
    services = list(described["processes"])
    assert services == [s for s in SERVICES if s != "worker-1" or workers]
    assert list_datasets(described["grpc_address"], described["api_key"]).datasets == []
    # The printed link opens the workbench, signed in by the key in its fragment.
    assert described["web_url"] == f"http://{described['http_address']}/#key={described['api_key']}"
    page = httpx.get(described["web_url"], timeout=10)
    assert page.status_code == 200 and b'<div id="app">' in page.content
    started = tree([process.pid])
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    stops = [line.split()[1] for line in err.splitlines() if line.startswith("  stopping ")]
    assert stops == sorted(services, key=["gateway", "worker-1", "trainer", "dataset", "tagger", "s3"].index)
    assert survivors(started) == []


def test_killing_the_command_leaves_nothing(stack_cli):
    process, _ = stack_cli
    started = tree([process.pid])
    assert len(started) > len(SERVICES) + 1
    process.kill()
    process.wait()
    assert survivors(started) == []


@pytest.mark.parametrize("stack_cli", [0], indirect=True)
def test_the_command_stops_the_rest_when_one_dies(stack_cli):
    process, described = stack_cli
    started = tree([process.pid])
    os.kill(described["processes"]["dataset"], signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "dataset exited with code -9; stopping the rest" in err
    assert survivors(started) == []


STUBBORN = ("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "signal.pause()")


def stubborn_process() -> subprocess.Popen[str]:
    """A process in a session of its own that ignores SIGTERM, as a service stuck on a dead dependency."""
    process = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


@pytest.mark.parametrize("finish", ["stack dies", "done"])
def test_the_guard_ends_what_is_left_only_when_the_stack_dies(finish):
    guard = subprocess.Popen([sys.executable, "-m", "services.stack_guard", "1"], cwd=ROOT, stdin=subprocess.PIPE,
                             text=True)
    stubborn = stubborn_process()
    try:
        assert guard.stdin is not None
        guard.stdin.write(f"group {stubborn.pid}\n")
        if finish == "done":
            guard.stdin.write("done\n")
        guard.stdin.close()  # what the kernel does when the stack dies
        assert guard.wait(30) == 0
        if finish == "done":
            assert stubborn.poll() is None
        else:
            assert stubborn.wait(30) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()


@pytest.mark.parametrize("flag", ["--grpc-port", "--http-port"])
def test_a_taken_port_is_refused_before_anything_starts(tmp_path, stack_env, flag):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "services.stack", "--data-dir", str(tmp_path / "kiln"), flag,
                               str(port)], cwd=ROOT, env=stack_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout.strip() == f"error: {flag} {port}: the port is taken (Address already in use); pick another, " \
                                  "or 0 for a free one"
    assert not (tmp_path / "kiln").exists()


def test_a_negative_worker_count_is_refused():
    done = subprocess.run([sys.executable, "-m", "services.stack", "--workers", "-1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--workers must be 0 or more" in done.stderr
