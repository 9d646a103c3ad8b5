"""The TypeScript SDK's generated code matches the protos, from the plugin its lock file pins.

`make test` installs and builds sdk/typescript first (npm ci), which puts the
pinned protoc-gen-es where buf.gen.typescript.yaml looks for it.
"""

from __future__ import annotations

import filecmp
import json
import pathlib
import subprocess
import sys

import google

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUF = pathlib.Path(sys.executable).parent / "buf"
SDK = ROOT / "sdk" / "typescript"
TEMPLATE = "buf.gen.typescript.yaml"
GENERATED = pathlib.Path("sdk") / "typescript" / "src" / "gen"
INTERNAL_PROTOS = ("tagger", "snapshot_manifest", "trainer_worker")


def _files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_generated_code_is_up_to_date(tmp_path: pathlib.Path) -> None:
    plugin = SDK / "node_modules" / ".bin" / "protoc-gen-es"
    assert plugin.exists(), "run `npm ci` in sdk/typescript (`make test` does)"
    # -o prefixes the template's output folder: the fresh code lands in tmp_path/sdk/typescript/src/gen.
    result = subprocess.run([str(BUF), "generate", "--template", TEMPLATE, "-o", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    fresh_root, committed_root = tmp_path / GENERATED, ROOT / GENERATED
    fresh = _files(fresh_root)
    assert fresh == _files(committed_root), f"run `buf generate --template {TEMPLATE}` and commit {GENERATED}"
    stale = [str(p) for p in fresh if not filecmp.cmp(fresh_root / p, committed_root / p, shallow=False)]
    assert not stale, f"out of date with protos/: {stale}; run `buf generate --template {TEMPLATE}`"


def test_only_the_public_api_is_generated() -> None:
    names = {p.name for p in (ROOT / GENERATED / "kiln" / "v1").iterdir()}
    assert {"dataset_pb.ts", "trainer_pb.ts", "tagging_types_pb.ts", "webhooks_pb.ts"} <= names
    assert not {f"{internal}_pb.ts" for internal in INTERNAL_PROTOS} & names


def test_vendored_error_details_are_the_installed_wheels() -> None:
    """The error details the services send are the wheel's messages: the SDK decodes the same ones."""
    vendored = SDK / "proto" / "google" / "rpc" / "error_details.proto"
    installed = pathlib.Path(google.__path__[0]) / "rpc" / "error_details.proto"
    assert vendored.read_bytes() == installed.read_bytes(), f"copy {installed} to {vendored} again"


def test_dependencies_are_pinned_exactly() -> None:
    """A range would let `npm install` drift from what the lock file was tested with."""
    package = json.loads((SDK / "package.json").read_text())
    lock = json.loads((SDK / "package-lock.json").read_text())
    pins = {**package["dependencies"], **package["devDependencies"]}
    ranged = {name: version for name, version in pins.items() if not version[0].isdigit()}
    assert not ranged, ranged
    locked = {name: lock["packages"][f"node_modules/{name}"]["version"] for name in pins}
    assert locked == pins, "package-lock.json differs from package.json: run `npm install` in sdk/typescript"
