"""Operator and user command line: install / list / remove taggers, and tag a folder of images.

python -m services.tagger install --name wd-vit-v3 --model model.onnx --tags selected_tags.csv
python -m services.tagger list
python -m services.tagger remove wd-vit-v3
python -m services.tagger tag photos/ --write-captions
python -m services.tagger serve          # the gRPC TaggerService
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

from tqdm import tqdm

from services.tagger.engine import ImageResult, TaggingEngine
from services.tagger.errors import TaggerError
from services.tagger.options import TaggingOptions
from services.tagger.registry import TaggerRegistry
from services.tagger.settings import TaggerSettings

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.tagger", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dir", type=pathlib.Path, help="installed taggers' directory (default: KILN_TAGGER_DIR, else var/taggers)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    install = commands.add_parser("install", help="install a WD14-format tagger from files")
    install.add_argument("--name", required=True, help="e.g. wd-vit-tagger-v3")
    install.add_argument("--model", required=True, type=pathlib.Path, help="model.onnx")
    install.add_argument("--tags", required=True, type=pathlib.Path, help="selected_tags.csv")
    install.add_argument("--replace", action="store_true", help="replace an installed tagger of that name")

    listing = commands.add_parser("list", help="list installed taggers")
    listing.add_argument("--json", action="store_true")

    remove = commands.add_parser("remove", help="remove an installed tagger")
    remove.add_argument("name")

    commands.add_parser("serve", help="run the gRPC tagger service (settings from KILN_ variables)")

    tag = commands.add_parser("tag", help="tag the images of a folder (or single files)")
    tag.add_argument("paths", nargs="+", type=pathlib.Path)
    tag.add_argument("--tagger", help="tagger name (default: the preferred one, see `list`)")
    tag.add_argument("--threshold", type=float, default=0.35, help="general tag threshold")
    tag.add_argument("--character-threshold", type=float, default=0.85)
    tag.add_argument("--mcut", action="store_true", help="MCut threshold for general tags")
    tag.add_argument("--character-mcut", action="store_true", help="MCut threshold for character tags")
    tag.add_argument("--max-tags", type=int)
    tag.add_argument("--unsorted", action="store_true", help="keep the model's tag order")
    tag.add_argument("--no-character-first", action="store_true")
    tag.add_argument("--no-rating", action="store_true")
    tag.add_argument("--keep-underscores", action="store_true")
    tag.add_argument("--exclude", default="", help="comma-separated tags never to output")
    tag.add_argument("--no-screening", action="store_true", help="skip the moderation verdict")
    tag.add_argument("--write-captions", action="store_true", help="write IMAGE.txt beside each image")
    tag.add_argument("--overwrite", action="store_true", help="replace existing caption files")
    tag.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from services.tagger.server import main as serve

        serve()
        return 0
    settings = TaggerSettings()
    registry = TaggerRegistry(args.dir or settings.taggers_dir(), settings.tagger_runtime)
    try:
        if args.command == "install":
            info = registry.install(args.name, args.model, args.tags, replace=args.replace)
            print(f"installed {info.name}: {info.description} (sha256 {info.model_sha256})")
        elif args.command == "list":
            _print_list(registry, settings, as_json=args.json)
        elif args.command == "remove":
            registry.remove(args.name)
            print(f"removed {args.name}")
        else:
            return _tag(args, registry, settings)
    except TaggerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _print_list(registry: TaggerRegistry, settings: TaggerSettings, *, as_json: bool) -> None:
    preferred = registry.preferred(settings.tagger_default)
    for info in registry.list():
        if as_json:
            print(json.dumps({**info.__dict__, "kind": str(info.kind), "preferred": info.name == preferred}))
        else:
            mark = "*" if info.name == preferred else " "
            print(f"{mark} {info.name:<28} {info.kind:<8} {info.tag_count:>6} tags  {info.description}")


def _tag(args: argparse.Namespace, registry: TaggerRegistry, settings: TaggerSettings) -> int:
    images = _collect_images(args.paths)
    if not images:
        raise TaggerError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {', '.join(map(str, args.paths))}")
    options = TaggingOptions(
        general_threshold=args.threshold,
        character_threshold=args.character_threshold,
        general_mcut=args.mcut,
        character_mcut=args.character_mcut,
        max_tags=args.max_tags,
        sort_by_confidence=not args.unsorted,
        character_first=not args.no_character_first,
        include_rating=not args.no_rating,
        replace_underscores=not args.keep_underscores,
        undesired_tags=tuple(t for t in args.exclude.split(",") if t.strip()),
    )
    tagger = registry.load(args.tagger or registry.preferred(settings.tagger_default))
    engine = TaggingEngine(
        tagger, policy=settings.moderation_policy(), screen=not args.no_screening, runtime=settings.tagger_runtime
    )
    failures = 0
    with tqdm(
        total=len(images), unit="img", desc=f"tagging with {tagger.info.name}", file=sys.stderr, disable=None
    ) as bar:
        for result in engine.iter_tag(images, options):
            path = images[result.index]
            failures += not result.ok
            bar.write(_describe(path, result, as_json=args.json), file=sys.stdout)
            if result.ok and args.write_captions:
                _write_caption(path, result, overwrite=args.overwrite, bar=bar)
            bar.update()
    if failures:
        print(f"{failures} of {len(images)} images could not be tagged", file=sys.stderr)
    return 1 if failures else 0


def _collect_images(paths: Sequence[pathlib.Path]) -> list[pathlib.Path]:
    found: list[pathlib.Path] = []
    for path in paths:
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        found += [p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return found


def _describe(path: pathlib.Path, result: ImageResult, *, as_json: bool) -> str:
    verdict = result.verdict
    if as_json:
        return json.dumps(
            {
                "path": str(path),
                "error": result.error,
                "tags": [{"name": t.name, "score": round(t.score, 4), "category": t.category.name.lower()}
                         for t in result.tags],
                "verdict": str(verdict.decision) if verdict else None,
                "reasons": [{"source": str(f.source), "label": f.label, "score": round(f.score, 4)}
                            for f in verdict.reasons] if verdict else [],
            }
        )  # fmt: skip
    if not result.ok:
        return f"{path}: FAILED {result.error}"
    screening = ""
    if verdict is not None:
        why = ", ".join(f"{f.label} {f.score:.2f}" for f in verdict.reasons)
        screening = f"[{verdict.decision}{': ' + why if why else ''}] "
    return f"{path}: {screening}{result.caption}"


def _write_caption(path: pathlib.Path, result: ImageResult, *, overwrite: bool, bar: tqdm) -> None:
    caption = path.with_suffix(".txt")
    if caption.exists() and not overwrite:
        # Hand-edited captions are never replaced silently.
        bar.write(f"kept existing {caption} (pass --overwrite to replace it)", file=sys.stderr)
        return
    caption.write_text(result.caption + "\n", encoding="utf-8")
