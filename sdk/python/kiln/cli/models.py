"""`kiln models publish|list|get|delete|download`."""

from __future__ import annotations

import argparse
import pathlib

from kiln.cli import describe
from kiln.cli.context import Context
from kiln.client import resource
from kiln.v1 import trainer_pb2 as tpb

VISIBILITIES = {describe.enum_word(name, "VISIBILITY_"): value
                for name, value in tpb.Model.Visibility.items() if value}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("models", help="published LoRAs").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    publish = group.add_parser("publish", parents=[common], help="publish one saved epoch of a job as a model")
    publish.add_argument("job", help="trainingJobs/ID or ID")
    publish.add_argument("--epoch", type=int, required=True)
    publish.add_argument("--name", required=True, help="its display name, unique among your models")
    publish.add_argument("--description", default="")
    publish.add_argument("--trigger", dest="trigger_words", action="append", default=[],
                         help="a trigger word (repeatable; default: the captions' head tags)")
    publish.add_argument("--visibility", choices=sorted(VISIBILITIES), default="private")
    publish.add_argument("--showcase", type=int, action="append", default=[],
                         help="index of a preview of the epoch to show (repeatable; default: all)")
    publish.set_defaults(run=publish_model)
    listing = group.add_parser("list", parents=[common], help="your models")
    listing.add_argument("--public", action="store_true", help="also other tenants' public models")
    listing.set_defaults(run=list_models)
    for action, run, text in (("get", get_model, "one model"), ("delete", delete_model, "unpublish a model")):
        parser = group.add_parser(action, parents=[common], help=text)
        parser.add_argument("model", help="models/ID or ID")
        parser.set_defaults(run=run)
    download = group.add_parser("download", parents=[common], help="a model's LoRA file")
    download.add_argument("model", help="models/ID or ID")
    download.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."), help="a file or a folder")
    download.set_defaults(run=download_model)


def publish_model(ctx: Context) -> int:
    args = ctx.args
    model = ctx.client.publish_model(args.job, args.epoch, args.name, description=args.description,
                                     trigger_words=args.trigger_words, visibility=args.visibility,
                                     showcase_previews=args.showcase)
    ctx.out.result(model, f"published {describe.model(model)}")
    return 0


def list_models(ctx: Context) -> int:
    found: list[tpb.Model] = []
    token = ""
    while True:
        page = ctx.client.trainer.ListModels(tpb.ListModelsRequest(page_size=100, page_token=token,
                                                                   include_public=ctx.args.public))
        found += page.models
        token = page.next_page_token
        if not token:
            break
    ctx.out.result({"models": found}, [describe.model(m) for m in found] or ["no models"])
    return 0


def _model(ctx: Context) -> tpb.Model:
    return ctx.client.trainer.GetModel(tpb.GetModelRequest(name=resource("models", ctx.args.model)))


def get_model(ctx: Context) -> int:
    model = _model(ctx)
    ctx.out.result(model, describe.model(model))
    return 0


def delete_model(ctx: Context) -> int:
    name = resource("models", ctx.args.model)
    ctx.client.trainer.DeleteModel(tpb.DeleteModelRequest(name=name))
    ctx.out.result({"deleted": name}, f"deleted {name}")
    return 0


def download_model(ctx: Context) -> int:
    model = _model(ctx)
    out: pathlib.Path = ctx.args.out
    path = out / f"{model.display_name or model.name.rsplit('/', 1)[-1]}.safetensors" if out.is_dir() else out
    saved = ctx.client.save_artifact(model.file.name, path)
    ctx.out.result({"model": model.name, "path": str(saved)}, f"{model.name}'s LoRA: {saved}")
    return 0
