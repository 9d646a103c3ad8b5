"""`make bench` never hides a suite that fails: fake suites stand in for the real (heavy) ones."""

from __future__ import annotations

import json
import pathlib
import textwrap
import uuid

import pytest

from benchmarks.__main__ import main as bench_main
from benchmarks.runner import run_suites

FAKE_SUITES = {
    "fast": "def main():\n    return {'rate': 2.5}\n",
    "with_options": "def main(argv):\n    return {'options_given': float(len(argv))}\n",
    "missing_dependency": "import kiln_no_such_module\n\ndef main():\n    return {'never': 1.0}\n",
    "raises": "def main():\n    raise RuntimeError('the baseline would not start')\n",
    "no_figures": "def main():\n    return {}\n",
}


@pytest.fixture
def suites(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package of fake suites on sys.path; its name, unique so no test sees another's modules."""
    package = f"fake_bench_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    for name, source in FAKE_SUITES.items():
        (tmp_path / package / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_working_suites_report_their_figures(suites: str) -> None:
    report = run_suites(["fast", "with_options"], suites, say=lambda line: None)
    assert report.ok
    assert report.figures == {"fast": {"rate": 2.5}, "with_options": {"options_given": 0.0}}


def test_each_failing_suite_is_named_with_its_reason_and_the_rest_still_run(suites: str) -> None:
    said: list[str] = []
    report = run_suites(["missing_dependency", "raises", "no_figures", "fast", "not_a_suite"], suites, said.append)
    assert not report.ok
    assert report.figures == {"fast": {"rate": 2.5}}
    failures = {f.suite: (f.stage, f.reason) for f in report.failures}
    assert failures.keys() == {"missing_dependency", "raises", "no_figures", "not_a_suite"}
    assert failures["missing_dependency"][0] == "import"
    assert "kiln_no_such_module" in failures["missing_dependency"][1]
    assert failures["raises"] == ("run", "RuntimeError: the baseline would not start")
    assert failures["no_figures"][0] == "run"
    assert failures["not_a_suite"][0] == "import"
    assert any("raises" in line and "baseline would not start" in line for line in said)


def test_bench_exits_non_zero_on_a_failed_suite_and_still_writes_the_others(
    suites: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    assert bench_main(["fast", "raises", "with_options", "--json", str(out)], package=suites) == 1
    written = json.loads(out.read_text())
    assert {k: v for k, v in written.items() if k != "raises"} == {"fast": {"rate": 2.5},
                                                                   "with_options": {"options_given": 0.0}}
    assert written["raises"]["failed"] == "run" and written["raises"]["reason"]
    assert "raises (run): RuntimeError: the baseline would not start" in capsys.readouterr().err
    assert bench_main(["fast"], package=suites) == 0
