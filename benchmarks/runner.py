"""Runs benchmark suites one after another: a suite that fails to import, raises or returns no
figures is recorded as failed, with why, and the rest still run."""

from __future__ import annotations

import importlib
import inspect
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SuiteFailure:
    suite: str
    stage: str  # "import" or "run"
    reason: str


@dataclass
class BenchReport:
    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[SuiteFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def run_suites(names: Sequence[str], package: str = "benchmarks",
               say: Callable[[str], None] = print) -> BenchReport:
    """Each suite is the module `package.name` with a `main()` (or `main(argv)`, given no
    arguments) returning its figures by name."""
    report = BenchReport()
    for name in names:
        try:
            module = importlib.import_module(f"{package}.{name}")
        except Exception as error:
            _fail(report, say, SuiteFailure(name, "import", _describe(error)))
            continue
        start = time.perf_counter()
        try:
            figures = _call_main(module.main)
        except (Exception, SystemExit) as error:
            _fail(report, say, SuiteFailure(name, "run", _describe(error)))
            continue
        if not isinstance(figures, dict) or not figures:
            _fail(report, say, SuiteFailure(name, "run", f"main() returned {figures!r}, not its figures"))
            continue
        report.figures[name] = figures
        say(f"  ({name} took {time.perf_counter() - start:.0f} s)\n")
    return report


def _call_main(main: Callable[..., object]) -> object:
    # Suites that parse options of their own get none from the bench command line.
    return main([]) if inspect.signature(main).parameters else main()


def _describe(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(error)).strip()


def _fail(report: BenchReport, say: Callable[[str], None], failure: SuiteFailure) -> None:
    report.failures.append(failure)
    say(f"{failure.suite}: FAILED to {failure.stage}: {failure.reason}\n")


def failure_summary(failures: Sequence[SuiteFailure]) -> str:
    lines = [f"{len(failures)} benchmark suite(s) failed:"]
    lines += [f"  {f.suite} ({f.stage}): {f.reason}" for f in failures]
    return "\n".join(lines)
