"""Installing, listing and removing taggers from the command line, and tagging a folder."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest
from PIL import Image

from services.tagger.base import TaggerKind
from services.tagger.cli import main
from services.tagger.registry import TaggerRegistry
from services.tagger.wd_tagger import MODEL_FILE, TAGS_FILE, WdTagger
from tests.tagger.helpers import encode, solid_png

BIAS = [0.7, 0.2, 0.05, 0.05, 0.9, 0.6, 0.1, 0.1, 0.1, 0.01, 0.9, 0.1]
MakeModel = Callable[..., pathlib.Path]


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "taggers"


def cli(root: pathlib.Path, *args: str) -> int:
    return main(["--dir", str(root), *map(str, args)])


def install(root: pathlib.Path, model_dir: pathlib.Path, name: str = "wd-test", *extra: str) -> int:
    return cli(
        root, "install", "--name", name, "--model", model_dir / MODEL_FILE, "--tags", model_dir / TAGS_FILE, *extra
    )


def test_install_list_remove(root: pathlib.Path, make_wd_model: MakeModel, capsys: pytest.CaptureFixture) -> None:
    registry = TaggerRegistry(root)
    assert registry.preferred() == "builtin"
    assert install(root, make_wd_model(BIAS)) == 0
    assert "installed wd-test: WD14-format ONNX model, 32px input, 12 tags" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "wd-test").iterdir()) == [MODEL_FILE, TAGS_FILE, "tagger.json"]

    assert cli(root, "list", "--json") == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(t["name"], t["kind"], t["preferred"]) for t in listed] == [
        ("builtin", "builtin", False),
        ("wd-test", "wd14", True),  # an installed WD model takes over from the built-in tagger
    ]
    assert listed[1]["tag_count"] == 12 and len(listed[1]["model_sha256"]) == 64
    assert isinstance(registry.load(registry.preferred()), WdTagger)

    assert cli(root, "remove", "wd-test") == 0
    assert not (root / "wd-test").exists() and registry.preferred() == "builtin"
    assert [t.kind for t in registry.list()] == [TaggerKind.BUILTIN]


def test_corrupt_model_is_refused_and_leaves_nothing(
    root: pathlib.Path, make_wd_model: MakeModel, capsys: pytest.CaptureFixture
) -> None:
    model_dir = make_wd_model(BIAS)
    (model_dir / MODEL_FILE).write_bytes(b"\x08\x07 this is not protobuf" * 10)
    assert install(root, model_dir) == 2
    error = capsys.readouterr().err
    assert f"install of 'wd-test' refused: {model_dir / MODEL_FILE} is not a loadable ONNX model" in error
    assert "copy model.onnx again" in error
    assert list(root.iterdir()) == []  # no staging directory, no half-installed tagger


def test_csv_output_mismatch_is_refused(root: pathlib.Path, make_wd_model: MakeModel, capsys) -> None:
    model_dir = make_wd_model(BIAS)
    other = make_wd_model(BIAS[:10], tags=[(f"tag_{i}", 0) for i in range(10)])
    code = cli(root, "install", "--name", "mixed", "--model", model_dir / MODEL_FILE, "--tags", other / TAGS_FILE)
    assert code == 2
    error = capsys.readouterr().err
    assert "produces 12 scores per image but the tag list has 10 rows" in error
    assert "install the CSV published with this model" in error
    assert list(root.iterdir()) == []


def test_names_and_replacement(root: pathlib.Path, make_wd_model: MakeModel, capsys: pytest.CaptureFixture) -> None:
    model_dir = make_wd_model(BIAS)
    for bad in ("builtin", "Has Spaces", "../escape", ""):
        assert install(root, model_dir, bad) == 2
    assert "not allowed" in capsys.readouterr().err
    assert install(root, model_dir) == 0
    assert install(root, model_dir) == 2
    assert "already installed; pass --replace" in capsys.readouterr().err
    assert install(root, model_dir, "wd-test", "--replace") == 0
    assert cli(root, "remove", "builtin") == 2
    assert cli(root, "remove", "nope") == 2
    assert "no tagger named 'nope'" in capsys.readouterr().err


def test_tag_a_folder(root: pathlib.Path, make_wd_model: MakeModel, tmp_path: pathlib.Path, capsys) -> None:
    assert install(root, make_wd_model(BIAS)) == 0
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.png").write_bytes(solid_png((10, 20, 30)))
    (folder / "nested" / "b.jpg").write_bytes(encode(Image.new("RGB", (40, 20), (200, 0, 0)), "JPEG"))
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.md").write_text("ignored")
    (folder / "nested" / "b.txt").write_text("my own caption\n")
    capsys.readouterr()

    assert cli(root, "tag", folder, "--write-captions", "--no-rating") == 1  # one image failed
    out = capsys.readouterr()
    assert (folder / "a.txt").read_text() == "hatsune miku, 1girl, long hair\n"
    assert (folder / "nested" / "b.txt").read_text() == "my own caption\n"  # hand-written: kept
    assert "kept existing" in out.err and "1 of 3 images could not be tagged" in out.err
    assert f"{folder / 'broken.png'}: FAILED cannot decode image" in out.out
    assert f"{folder / 'a.png'}: [allow] hatsune miku, 1girl, long hair" in out.out

    assert cli(root, "tag", folder / "a.png", "--tagger", "builtin", "--json", "--no-screening") == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["tags"][0] == {"name": "general", "score": 1.0, "category": "rating"}


def test_module_entry_point(root: pathlib.Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "services.tagger", "--dir", str(root), "list"],
        capture_output=True,
        text=True,
        check=False,
        cwd=pathlib.Path(__file__).parents[2],
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split()[:3] == ["*", "builtin", "builtin"]
