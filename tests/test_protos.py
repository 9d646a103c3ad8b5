"""Contracts: generated code matches the protos, buf lint passes, no breaking change."""

from __future__ import annotations

import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUF = pathlib.Path(sys.executable).parent / "buf"


def test_generated_code_is_up_to_date(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed_root = ROOT / "gen" / "python"
    committed = sorted(p.relative_to(committed_root) for p in (committed_root / "kiln").rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts)
    assert fresh == committed, "run `make protos` and commit gen/python"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, committed_root / p, shallow=False)]
    assert not stale, f"out of date with protos/: {stale}; run `make protos`"


def test_buf_lint():
    result = subprocess.run([str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _previous_commit() -> str:
    """The commit before HEAD that had protos, or HEAD itself on a repository's first commit."""
    parents = subprocess.run(["git", "rev-list", "--max-count=2", "HEAD", "--", "protos"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    return parents[1] if len(parents) > 1 else parents[0]


def test_buf_breaking_against_previous_commit():
    against = f".git#ref={_previous_commit()},subdir=protos"
    result = subprocess.run([str(BUF), "breaking", "protos", "--against", against], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
