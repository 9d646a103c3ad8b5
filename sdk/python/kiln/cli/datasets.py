"""`kiln datasets create|list|get|delete`."""

from __future__ import annotations

import argparse

from kiln.cli import describe
from kiln.cli.context import Context
from kiln.client import FAMILIES, resource
from kiln.v1 import dataset_pb2 as dpb


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("datasets", help="datasets of training images").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    create = group.add_parser("create", parents=[common], help="a new, empty dataset")
    create.add_argument("display_name", help="what to call it")
    create.add_argument("--family", choices=sorted(FAMILIES), default="sd15", help="the base-model family")
    create.add_argument("--repeat", type=int, default=0, help="repeat for images without their own (1..100)")
    create.add_argument("--description", default="")
    create.set_defaults(run=create_dataset)
    group.add_parser("list", parents=[common], help="your datasets").set_defaults(run=list_datasets)
    get = group.add_parser("get", parents=[common], help="one dataset")
    get.add_argument("dataset", help="datasets/ID or ID")
    get.set_defaults(run=get_dataset)
    delete = group.add_parser("delete", parents=[common], help="a dataset with its images and snapshots")
    delete.add_argument("dataset", help="datasets/ID or ID")
    delete.set_defaults(run=delete_dataset)


def create_dataset(ctx: Context) -> int:
    args = ctx.args
    created = ctx.client.create_dataset(args.display_name, args.family, args.repeat, args.description)
    ctx.out.result(created, f"created {describe.dataset(created)}")
    return 0


def list_datasets(ctx: Context) -> int:
    found = list(ctx.client.list_datasets())
    ctx.out.result({"datasets": found}, [describe.dataset(d) for d in found] or ["no datasets yet"])
    return 0


def get_dataset(ctx: Context) -> int:
    found = ctx.client.get_dataset(ctx.args.dataset)
    ctx.out.result(found, describe.dataset(found))
    return 0


def delete_dataset(ctx: Context) -> int:
    name = resource("datasets", ctx.args.dataset)
    ctx.client.datasets.DeleteDataset(dpb.DeleteDatasetRequest(name=name))
    ctx.out.result({"deleted": name}, f"deleted {name}")
    return 0
