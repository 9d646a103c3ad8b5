"""`python -m services.stack_s3 DIR`: the embedded S3 server (SeaweedFS) as a process of the local
stack. It prints one JSON line once the server answers (`{"endpoint": …, "pid": …}`) and stops the
server on SIGTERM or SIGINT. Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import threading

from services.common.embedded_s3 import EmbeddedS3


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = EmbeddedS3(pathlib.Path(args[0]), os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    try:
        server.start()
        assert server.process is not None
        print(json.dumps({"endpoint": server.endpoint, "pid": server.process.pid}), flush=True)
        process = server.process

        def watch() -> None:
            process.wait()
            stop.set()

        threading.Thread(target=watch, daemon=True).start()
        stop.wait()
        if process.poll() is not None:
            print(f"SeaweedFS exited with {process.returncode}; see {server.data_dir / 'weed.log'}", file=sys.stderr)
            return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
