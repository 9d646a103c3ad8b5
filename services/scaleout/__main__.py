"""`python -m services.scaleout`: runs the scale-out proof and prints what it measured."""

from __future__ import annotations

import os

# The proof starts processes (fork, then exec) while its own threads use gRPC: gRPC's fork handlers
# must not run in those children, which exec at once anyway.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import json
import pathlib
import shutil
import signal
import sys
import tempfile
from dataclasses import asdict

from services.scaleout.cluster import Shape
from services.scaleout.faults import FaultTooLate
from services.scaleout.proof import Workload, run_proof


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.scaleout", description=__doc__)
    parser.add_argument("--jobs", type=int, default=Workload.jobs, help="training jobs (default %(default)s)")
    parser.add_argument("--tenants", type=int, default=Workload.tenants, help="tenants (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=Workload.epochs, help="epochs per job (default %(default)s)")
    parser.add_argument("--no-faults", action="store_true", help="run without injecting faults")
    parser.add_argument("--loopback", action="store_true",
                        help="loopback addresses instead of network namespaces for the hosts")
    parser.add_argument("--dir", type=pathlib.Path, default=None,
                        help="where the cluster keeps its files and logs (default: a new temporary folder)")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.tenants < 1 or args.epochs < 2:
        parser.error("--jobs and --tenants must be 1 or more, --epochs 2 or more (a fault lands between epochs)")
    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        parser.error(f"--dir {args.dir} is not empty: give a new or empty folder (a cluster starts from nothing)")
    root = args.dir or pathlib.Path(tempfile.mkdtemp(prefix="kiln-scaleout-"))
    workload = Workload(jobs=args.jobs, tenants=args.tenants, epochs=args.epochs, faults=not args.no_faults)
    shape = Shape(namespaces=False if args.loopback else None)
    print(f"the cluster's files and logs: {root}", flush=True)
    # SIGTERM ends the proof as Ctrl-C does: the cluster is stopped and its hosts removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        outcome = run_proof(root, workload, shape, report=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("interrupted; the cluster is stopped", file=sys.stderr)
        return 130
    except (FaultTooLate, RuntimeError, TimeoutError) as error:
        print(f"error: {error} (the parts' logs are in {root / 'logs'})", file=sys.stderr)
        return 1
    for line in outcome.summary(workload, shape):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(outcome), indent=2, default=str))
    print("the proof holds" if outcome.passed else f"the proof FAILED (the parts' logs are in {root / 'logs'})",
          flush=True)
    if outcome.passed and args.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
