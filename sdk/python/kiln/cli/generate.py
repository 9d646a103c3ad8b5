"""`kiln generate`: test images from a job's saved epochs, one cell or a comparison grid, saved to files."""

from __future__ import annotations

import argparse
import pathlib

from kiln.cli.context import Context


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    generate = commands.add_parser(
        "generate", parents=[common],
        help="test images from saved epochs (several epochs, strengths or prompts: a comparison grid)")
    generate.add_argument("job", help="trainingJobs/ID or ID")
    generate.add_argument("--epoch", dest="epochs", type=int, action="append", default=[],
                          help="a saved epoch, one row each (repeatable; 0: the base model alone; default: the last)")
    generate.add_argument("--strength", dest="strengths", type=float, action="append", default=[],
                          help="a LoRA strength, one column each (repeatable; default 1.0)")
    generate.add_argument("--prompt", dest="prompts", action="append", default=[],
                          help="a prompt, one column each (repeatable; default: the job's preview prompt)")
    generate.add_argument("--negative-prompt", default="")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--steps", type=int, default=0)
    generate.add_argument("--size", default="", help="WxH (default: the training resolution)")
    generate.add_argument("--count", type=int, default=0, help="images of a single cell, 1..8")
    generate.add_argument("--out", type=pathlib.Path, default=pathlib.Path("generated"), help="the folder to save to")
    generate.set_defaults(run=generate_images)


def generate_images(ctx: Context) -> int:
    from kiln.cli.images import parse_size

    args = ctx.args
    width, height = parse_size(args.size) if args.size else (0, 0)
    files = ctx.client.generate_images(
        args.job, args.out, epochs=args.epochs, strengths=args.strengths, prompts=args.prompts,
        negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps, width=width, height=height,
        count=args.count, on_saved=(lambda path: ctx.out.note(f"saved {path}")) if ctx.progress else None)
    ctx.out.result({"files": [str(path) for path in files]}, f"{len(files)} file(s) in {args.out}")
    return 0
