"""Installed taggers: one directory per tagger under a configurable root, plus the built-in one.

Layout: `<root>/<name>/model.onnx`, `selected_tags.csv` and `tagger.json` (what was checked at
install). Installs are validated in a staging directory and then renamed into place, so a
reader never sees a half-copied or unvalidated tagger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import pathlib
import re
import shutil
import uuid
from dataclasses import asdict, dataclass

from services.tagger.base import Tagger, TaggerKind
from services.tagger.builtin_tagger import BUILTIN_TAGGER_NAME, BuiltinTagger
from services.tagger.errors import InvalidTaggerFiles, TaggerAlreadyExists, TaggerError, TaggerNotFound
from services.tagger.runtime import RuntimeOptions
from services.tagger.wd_tagger import MODEL_FILE, TAGS_FILE, WdTagger

log = logging.getLogger(__name__)

MANIFEST_FILE = "tagger.json"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class InstalledTagger:
    name: str
    kind: TaggerKind
    tag_count: int
    description: str
    input_size: int | None = None
    fixed_batch: int | None = None
    installed_at: str | None = None  # ISO 8601, UTC
    model_sha256: str | None = None


class TaggerRegistry:
    def __init__(self, root: pathlib.Path, runtime: RuntimeOptions | None = None) -> None:
        self.root = root
        self._runtime = runtime or RuntimeOptions()

    def install(self, name: str, model: pathlib.Path, tags: pathlib.Path, *, replace: bool = False) -> InstalledTagger:
        """Copy, validate (load, shape checks, one inference) and register a WD14 tagger."""
        _check_name(name)
        target = self.root / name
        if target.exists() and not replace:
            raise TaggerAlreadyExists(f"tagger {name!r} is already installed; pass --replace or remove it first")
        for path, what in ((model, "model"), (tags, "tag list")):
            if not path.is_file():
                raise InvalidTaggerFiles(f"{what} {path} does not exist or is not a file")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{name}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            model_sha256 = _copy_hashing(model, staging / MODEL_FILE)
            _copy_hashing(tags, staging / TAGS_FILE)
            try:
                tagger = WdTagger(name, staging, self._runtime)
                tagger.self_check()
            except InvalidTaggerFiles as error:
                # Name the user's files, not our staging copies.
                message = str(error).replace(str(staging / MODEL_FILE), str(model))
                message = message.replace(str(staging / TAGS_FILE), str(tags))
                raise InvalidTaggerFiles(f"install of {name!r} refused: {message}") from None
            info = InstalledTagger(
                name=name,
                kind=TaggerKind.WD14,
                tag_count=tagger.info.tag_count,
                description=tagger.info.description,
                input_size=tagger.info.input_size,
                fixed_batch=tagger.info.fixed_batch,
                installed_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                model_sha256=model_sha256,
            )
            (staging / MANIFEST_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
            self._move_into_place(staging, target, replace=replace)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return info

    def list(self) -> list[InstalledTagger]:
        """The built-in tagger first, then installed ones by name."""
        found = [self._builtin()]
        if self.root.is_dir():
            for directory in sorted(self.root.iterdir()):
                if directory.name.startswith(".") or not directory.is_dir():
                    continue
                try:
                    found.append(self._read_manifest(directory))
                except TaggerError as error:
                    log.warning("skipping %s: %s", directory, error)
        return found

    def get(self, name: str) -> InstalledTagger:
        if name == BUILTIN_TAGGER_NAME:
            return self._builtin()
        directory = self.root / name
        if not NAME_PATTERN.match(name) or not directory.is_dir():
            raise TaggerNotFound(f"no tagger named {name!r}; installed: {', '.join(t.name for t in self.list())}")
        return self._read_manifest(directory)

    def remove(self, name: str) -> None:
        if name == BUILTIN_TAGGER_NAME:
            raise TaggerError("the built-in tagger cannot be removed")
        self.get(name)
        # Rename first so a concurrent reader sees the tagger either whole or gone.
        doomed = self.root / f".removing-{name}-{uuid.uuid4().hex}"
        (self.root / name).rename(doomed)
        shutil.rmtree(doomed)

    def load(self, name: str) -> Tagger:
        info = self.get(name)
        if info.kind == TaggerKind.BUILTIN:
            return BuiltinTagger()
        return WdTagger(name, self.root / name, self._runtime)

    def preferred(self, configured: str | None = None) -> str:
        """The tagger used when a request names none: the configured one, else the newest
        installed WD model (installing one takes over), else the built-in tagger."""
        if configured:
            return self.get(configured).name
        installed = [t for t in self.list() if t.kind == TaggerKind.WD14]
        if not installed:
            return BUILTIN_TAGGER_NAME
        return max(installed, key=lambda t: (t.installed_at or "", t.name)).name

    def _builtin(self) -> InstalledTagger:
        info = BuiltinTagger().info
        return InstalledTagger(name=info.name, kind=info.kind, tag_count=info.tag_count, description=info.description)

    def _read_manifest(self, directory: pathlib.Path) -> InstalledTagger:
        try:
            data = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
            data["kind"] = TaggerKind(data["kind"])
            return InstalledTagger(**data)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise TaggerError(
                f"{directory} is not an installed tagger ({type(error).__name__}: {error}); "
                f"remove the directory and install again"
            ) from None

    def _move_into_place(self, staging: pathlib.Path, target: pathlib.Path, *, replace: bool) -> None:
        old = None
        if target.exists() and replace:
            old = self.root / f".replaced-{target.name}-{uuid.uuid4().hex}"
            target.rename(old)
        try:
            staging.rename(target)
        except OSError:
            if old is not None:
                old.rename(target)
            raise TaggerAlreadyExists(f"tagger {target.name!r} was installed concurrently") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _check_name(name: str) -> None:
    if name == BUILTIN_TAGGER_NAME:
        raise TaggerError(f"{name!r} is the built-in tagger's name; choose another")
    if not NAME_PATTERN.match(name):
        raise TaggerError(
            f"tagger name {name!r} is not allowed: use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. wd-vit-tagger-v3)"
        )


def _copy_hashing(source: pathlib.Path, destination: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as reader, destination.open("wb") as writer:
        while chunk := reader.read(_COPY_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()
