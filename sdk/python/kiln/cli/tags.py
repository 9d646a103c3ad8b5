"""`kiln tags add|remove|replace|stats`: one tag across a dataset's captions (or chosen images')."""

from __future__ import annotations

import argparse

from kiln.cli.context import Context
from kiln.client import ROLES, resource, role_of
from kiln.v1 import dataset_pb2 as dpb

Edit = dpb.BatchEditTagsRequest


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("tags", help="captions' tags across a dataset").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add = group.add_parser("add", parents=[common], help="a tag in every caption (trigger words: --head)")
    remove = group.add_parser("remove", parents=[common], help="a tag from every caption")
    replace = group.add_parser("replace", parents=[common], help="a tag by another in every caption")
    for parser in (add, remove, replace):
        parser.add_argument("dataset", help="datasets/ID or ID")
        parser.add_argument("tag")
    replace.add_argument("replacement")
    where = add.add_mutually_exclusive_group()
    where.add_argument("--head", dest="head", action="store_true", help="before every other tag")
    where.add_argument("--tail", dest="head", action="store_false", help="after every other tag (the default)")
    for parser in (add, remove, replace):
        parser.add_argument("--image", dest="images", action="append", default=[],
                            help="only this image (repeatable; default: every image)")
    add.set_defaults(run=add_tag)
    remove.set_defaults(run=remove_tag)
    replace.set_defaults(run=replace_tag)
    stats = group.add_parser("stats", parents=[common], help="how often each tag appears")
    stats.add_argument("dataset", help="datasets/ID or ID")
    stats.add_argument("--role", choices=sorted(ROLES))
    stats.set_defaults(run=tag_statistics)


def _edit(ctx: Context, request: dpb.BatchEditTagsRequest, done: str) -> int:
    request.parent = resource("datasets", ctx.args.dataset)
    request.names.extend(ctx.args.images)
    answer = ctx.client.datasets.BatchEditTags(request)
    ctx.out.result(answer, f"{done} in {answer.changed_count} caption(s)")
    return 0


def add_tag(ctx: Context) -> int:
    position = dpb.TAG_POSITION_HEAD if ctx.args.head else dpb.TAG_POSITION_TAIL
    return _edit(ctx, Edit(add=Edit.AddTag(tag=ctx.args.tag, position=position)),
                 f"added {ctx.args.tag!r} at the {'head' if ctx.args.head else 'tail'}")


def remove_tag(ctx: Context) -> int:
    return _edit(ctx, Edit(remove=Edit.RemoveTag(tag=ctx.args.tag)), f"removed {ctx.args.tag!r}")


def replace_tag(ctx: Context) -> int:
    return _edit(ctx, Edit(replace=Edit.ReplaceTag(tag=ctx.args.tag, replacement=ctx.args.replacement)),
                 f"replaced {ctx.args.tag!r} by {ctx.args.replacement!r}")


def tag_statistics(ctx: Context) -> int:
    stats = ctx.client.datasets.GetTagStatistics(dpb.GetTagStatisticsRequest(
        parent=resource("datasets", ctx.args.dataset), role=role_of(ctx.args.role or 0)))
    ctx.out.result(stats, [f"{stats.image_count} images", *(f"{t.count:5d}  {t.tag}" for t in stats.tags)])
    return 0
