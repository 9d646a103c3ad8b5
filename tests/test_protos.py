"""Contracts: generated code matches the protos, buf lint passes, nothing breaks the released baseline.

The baseline (protos/baseline.binpb) is a `buf build` image of the released contracts, committed, so
the check needs no git history (CI may clone with --depth 1). Update it on purpose, with
`make proto-baseline`, when a release accepts the difference.
"""

from __future__ import annotations

import filecmp
import pathlib
import re
import shutil
import subprocess
import sys

from google.protobuf.descriptor import FileDescriptor

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUF = pathlib.Path(sys.executable).parent / "buf"
BASELINE = ROOT / "protos" / "baseline.binpb"
# Contracts between services only; the public API (dataset.proto) must never depend on them.
INTERNAL_PROTOS = {"kiln/v1/tagger.proto", "kiln/v1/snapshot_manifest.proto", "kiln/v1/trainer_worker.proto"}


def test_generated_code_is_up_to_date(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed_root = ROOT / "sdk" / "python"
    committed = sorted(p.relative_to(committed_root) for p in (committed_root / "kiln" / "v1").rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts)
    assert fresh == committed, "run `make protos` and commit sdk/python/kiln/v1"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, committed_root / p, shallow=False)]
    assert not stale, f"out of date with protos/: {stale}; run `make protos`"


def test_vendored_google_api_protos_are_the_installed_wheels():
    """buf reads the vendored copies, the generated code imports the wheel's modules: they must agree."""
    import google

    installed = pathlib.Path(google.__path__[0])
    vendored = ROOT / "third_party" / "googleapis" / "google"
    copies = sorted(str(p.relative_to(vendored)) for p in vendored.rglob("*.proto"))
    assert copies == ["api/field_behavior.proto", "api/resource.proto", "rpc/status.proto"]
    differing = [name for name in copies if (vendored / name).read_bytes() != (installed / name).read_bytes()]
    assert not differing, f"copy {differing} again from {installed} (third_party/googleapis/README.md)"


def test_no_code_is_generated_for_the_vendored_protos():
    assert not (ROOT / "sdk" / "python" / "google").exists()


def _imports(file: FileDescriptor) -> set[str]:
    found: set[str] = set()
    for dependency in file.dependencies:
        found |= {dependency.name} | _imports(dependency)
    return found


def test_the_public_api_imports_no_internal_contract():
    from kiln.v1 import dataset_pb2, trainer_pb2

    for public in (dataset_pb2, trainer_pb2):
        assert not _imports(public.DESCRIPTOR) & INTERNAL_PROTOS, public.DESCRIPTOR.name


def test_every_resource_names_itself_with_an_identifier_field():
    from google.api import field_behavior_pb2, resource_pb2

    from kiln.v1 import dataset_pb2, tagger_pb2, trainer_pb2

    modules = (dataset_pb2, tagger_pb2, trainer_pb2)
    resources = {}
    for module in modules:
        for message in module.DESCRIPTOR.message_types_by_name.values():
            if message.GetOptions().HasExtension(resource_pb2.resource):
                resources[message.name] = message.GetOptions().Extensions[resource_pb2.resource].type
    assert resources == {"Dataset": "kiln.dev/Dataset", "Image": "kiln.dev/Image",
                         "ImageUpload": "kiln.dev/ImageUpload", "Snapshot": "kiln.dev/Snapshot",
                         "Tagger": "kiln.dev/Tagger", "BaseModel": "kiln.dev/BaseModel",
                         "Preset": "kiln.dev/Preset", "TrainingJob": "kiln.dev/TrainingJob", "Model": "kiln.dev/Model"}
    for module in modules:
        for name in resources.keys() & module.DESCRIPTOR.message_types_by_name.keys():
            field = module.DESCRIPTOR.message_types_by_name[name].fields_by_name["name"]
            behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
            assert list(behaviors) == [field_behavior_pb2.IDENTIFIER], name


def test_buf_lint():
    result = subprocess.run([str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _breaking(workspace: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUF), "breaking", "protos", "--against", str(BASELINE)], cwd=workspace,
                          capture_output=True, text=True, check=False)


def _copy_workspace(target: pathlib.Path) -> pathlib.Path:
    """buf.yaml with both modules, as the repository has them, minus the baseline under test."""
    shutil.copy(ROOT / "buf.yaml", target / "buf.yaml")
    for module in ("protos", "third_party"):
        shutil.copytree(ROOT / module, target / module, ignore=shutil.ignore_patterns("*.binpb"))
    return target


def _edit(path: pathlib.Path, pattern: str, replacement: str) -> None:
    text, count = re.subn(pattern, replacement, path.read_text(), flags=re.MULTILINE)
    assert count == 1, f"{pattern!r} no longer matches {path.name}: pick another field to break"
    path.write_text(text)


def test_protos_are_compatible_with_the_released_baseline():
    result = _breaking(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_incompatible_change_fails_against_the_baseline(tmp_path):
    workspace = _copy_workspace(tmp_path)
    # The untouched copy passes, so a failure below is the edits' doing, not the copy's.
    untouched = _breaking(workspace)
    assert untouched.returncode == 0, untouched.stdout + untouched.stderr

    dataset_proto = workspace / "protos" / "kiln" / "v1" / "dataset.proto"
    _edit(dataset_proto, r"^(  string display_name = )2( )", r"\g<1>20\2")  # renumbered
    _edit(dataset_proto, r"^  int32 blocked_image_count = 8 .*\n", "")  # deleted
    result = _breaking(workspace)
    # 100: buf found breaking changes (an error of buf's own, like an unresolved import, exits 1).
    assert result.returncode == 100, result.stdout + result.stderr
    assert 'field "2" with name "display_name" on message "Dataset" was deleted' in result.stdout
    assert 'field "8" with name "blocked_image_count" on message "Snapshot" was deleted' in result.stdout
