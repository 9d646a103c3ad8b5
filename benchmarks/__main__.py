"""`make bench`: every benchmark, each printing ratios against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import time

SUITES = ("dataset_upload", "crop_speed", "tagger_throughput", "trainer_step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suites", nargs="*", default=list(SUITES), help=f"any of {', '.join(SUITES)}")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures: dict[str, dict[str, float]] = {}
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    for name in args.suites:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError:
            print(f"{name}: not available in this checkout")
            continue
        start = time.perf_counter()
        # Suites that parse options of their own get none from this command line.
        wants_argv = bool(inspect.signature(module.main).parameters)
        figures[name] = (module.main([]) if wants_argv else module.main()) or {}
        print(f"  ({name} took {time.perf_counter() - start:.0f} s)\n")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
