"""Generate the typed Python code for protos/kiln/v1 into sdk/python/kiln/v1 (the SDK ships it).

Besides the messages and gRPC stubs it writes the Connect code (`*_connect.py`, from
protoc-gen-connectrpc over the same google.protobuf messages), which the gateway serves over HTTP.

Run with `make protos`. tests/test_protos.py regenerates into a temporary
directory and fails when the committed code differs.

The google/api annotations are on the include path only: their Python modules
come from the googleapis-common-protos wheel, which the generated code imports.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
VENDORED_ROOT = ROOT / "third_party" / "googleapis"
OUT_ROOT = ROOT / "sdk" / "python"
# Only kiln/v1 is generated: kiln/ itself is the hand-written SDK around it.
PACKAGE_DIRS = ("kiln/v1",)


def well_known_include() -> str:
    import grpc_tools

    return str(pathlib.Path(grpc_tools.__file__).parent / "_proto")


def generate(out_root: pathlib.Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    bin_dir = pathlib.Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{VENDORED_ROOT}",
        f"-I{well_known_include()}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--plugin=protoc-gen-connectrpc={bin_dir / 'protoc-gen-connectrpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        # Over google.protobuf's messages (the default is the separate protobuf-py runtime).
        "--connectrpc_opt=protobuf=google",
        f"--connectrpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in PACKAGE_DIRS:
        init = out_root / package / "__init__.py"
        init.write_text('"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n')
        (out_root / package / "py.typed").write_text("")


def regenerate_in_place() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        staging = pathlib.Path(tmp)
        generate(staging)
        target = OUT_ROOT / "kiln" / "v1"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(staging / "kiln" / "v1", target)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, help="write here instead of sdk/python")
    ns = parser.parse_args()
    if ns.out:
        generate(ns.out)
    else:
        regenerate_in_place()
