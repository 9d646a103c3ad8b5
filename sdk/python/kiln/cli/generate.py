"""`kiln generate`: test images from a job's saved epochs, one cell or a comparison grid, saved to files."""

from __future__ import annotations

import argparse
import pathlib

from kiln.cli.context import Context
from kiln.client import resource
from kiln.v1 import trainer_pb2 as tpb


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
    request = tpb.GenerateImagesRequest(
        training_job=resource("trainingJobs", args.job), epochs=args.epochs, strengths=args.strengths,
        prompts=args.prompts, negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps,
        width=width, height=height, count=args.count)
    saved: list[dict[str, object]] = []
    for answer in ctx.client.trainer.GenerateImages(request):
        kind = answer.WhichOneof("content")
        if kind == "queued":
            if ctx.progress:
                ctx.out.note(f"waiting for a worker: position {answer.queued.position}")
            continue
        if kind == "image":
            image = answer.image
            file = args.out / (f"epoch{image.epoch}-strength{image.strength:g}-r{image.row}c{image.column}"
                               f"-{image.index}-seed{image.seed}.png")
            path = ctx.client.save_artifact(image.image.name, file)
            record: dict[str, object] = {"path": str(path), "image": image}
        else:
            path = ctx.client.save_artifact(answer.sheet.name, args.out / "grid.png")
            record = {"path": str(path), "sheet": answer.sheet}
        saved.append(record)
        if ctx.progress:
            ctx.out.note(f"saved {path}")
    ctx.out.result({"files": saved}, f"{len(saved)} file(s) in {args.out}")
    return 0
