"""`make bench`: every benchmark, each printing ratios against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import json
import platform
import sys

from benchmarks.runner import failure_summary, run_suites

SUITES = ("dataset_upload", "crop_speed", "oversized_requests", "tagger_throughput", "trainer_step",
          "trainer_startup", "training_queue", "event_latency", "service_training", "gateway_overhead",
          "gateway_connect", "webhook_delivery", "trainer_capacity")


def main(argv: list[str] | None = None, package: str = "benchmarks") -> int:
    """Exit status 1 when any suite failed to import, raised or returned no figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suites", nargs="*", default=list(SUITES), help=f"any of {', '.join(SUITES)}")
    parser.add_argument("--json", help="also write every suite's figures to this file; a suite that failed is "
                                       "listed under its name with `failed` and why, not left out")
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    report = run_suites(args.suites, package)
    if args.json:
        with open(args.json, "w") as out:
            failed = {f.suite: {"failed": f.stage, "reason": f.reason} for f in report.failures}
            json.dump({**report.figures, **failed}, out, indent=2)
    if not report.ok:
        print(failure_summary(report.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
