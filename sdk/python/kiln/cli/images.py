"""`kiln images upload|list|update|delete|crop`."""

from __future__ import annotations

import argparse
import pathlib

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from kiln.cli import describe
from kiln.cli.context import Context
from kiln.client import ROLES
from kiln.curation import CROP_MODES
from kiln.errors import KilnError
from kiln.v1 import dataset_pb2 as dpb


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("images", help="a dataset's images").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    upload = group.add_parser("upload", parents=[common],
                              help="a folder's PNG/JPEG files (or single files), skipping those already there")
    upload.add_argument("dataset", help="datasets/ID or ID")
    upload.add_argument("paths", nargs="+", type=pathlib.Path, metavar="FOLDER_OR_FILE",
                        help="a folder (its captions as .txt beside the images become tags) or image files")
    upload.add_argument("--role", choices=sorted(ROLES), default="training")
    upload.set_defaults(run=upload_images)
    listing = group.add_parser("list", parents=[common], help="a dataset's images")
    listing.add_argument("dataset", help="datasets/ID or ID")
    listing.add_argument("--role", choices=sorted(ROLES))
    listing.set_defaults(run=list_images)
    update = group.add_parser("update", parents=[common], help="an image's own repeat or caption")
    update.add_argument("image", help="datasets/ID/images/ID")
    update.add_argument("--repeat", type=int, help="its own repeat (0: the dataset's default)")
    update.add_argument("--tags", help='the caption as comma-separated tags, e.g. "mytrigger, smile"')
    update.set_defaults(run=update_image)
    delete = group.add_parser("delete", parents=[common], help="images, by name")
    delete.add_argument("images", nargs="+", help="datasets/ID/images/ID")
    delete.set_defaults(run=delete_images)
    crop = group.add_parser("crop", parents=[common], help="crop images to a training size (originals kept)")
    crop.add_argument("dataset", help="datasets/ID or ID")
    crop.add_argument("images", nargs="*", help="only these images (default: all)")
    crop.add_argument("--mode", choices=sorted(CROP_MODES), default="focus",
                      help="focus: around the main subject; center: the middle")
    crop.add_argument("--size", help="WxH, one of the family's sizes (default: 512x512 for sd15, 1024x1024 sdxl)")
    crop.set_defaults(run=crop_images)


def upload_images(ctx: Context) -> int:
    args, client = ctx.args, ctx.client
    uploaded: list[dpb.Image] = []
    for path in args.paths:
        if path.is_dir():
            uploaded += client.upload_folder(args.dataset, path, args.role, progress=ctx.progress)
        else:
            uploaded.append(client.upload_file(args.dataset, path, args.role))
    dataset = client.get_dataset(args.dataset)
    ctx.out.result({"images": uploaded, "dataset": dataset},
                   [*(describe.image(i) for i in uploaded), f"uploaded {len(uploaded)} image(s); "
                    f"{dataset.name} has {dataset.training_image_count} training images"])
    return 0


def list_images(ctx: Context) -> int:
    found = list(ctx.client.list_images(ctx.args.dataset, ctx.args.role or 0))
    ctx.out.result({"images": found}, [describe.image(i) for i in found] or ["no images"])
    return 0


def update_image(ctx: Context) -> int:
    args = ctx.args
    image, paths = dpb.Image(name=args.image), []
    if args.repeat is not None:
        image.repeat = args.repeat
        paths.append("repeat")
    if args.tags is not None:
        image.tags.extend(tag.strip() for tag in args.tags.split(",") if tag.strip())
        paths.append("tags")
    if not paths:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, "nothing to change",
                        [("--repeat/--tags", "give at least one")])
    updated = ctx.client.datasets.UpdateImage(dpb.UpdateImageRequest(image=image, update_mask=FieldMask(paths=paths)))
    ctx.out.result(updated, describe.image(updated))
    return 0


def delete_images(ctx: Context) -> int:
    for name in ctx.args.images:
        ctx.client.datasets.DeleteImage(dpb.DeleteImageRequest(name=name))
    ctx.out.result({"deleted": ctx.args.images}, [f"deleted {name}" for name in ctx.args.images])
    return 0


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{text!r} is not a size", [("--size", "WxH, e.g. 512x768")])
    return int(width), int(height)


def crop_images(ctx: Context) -> int:
    args = ctx.args
    width, height = parse_size(args.size) if args.size else (0, 0)
    last = ctx.client.crop_images(args.dataset, args.mode, width, height, args.images, progress=ctx.progress)
    ctx.out.result(last, f"cropped {last.done} of {last.total} images ({last.upscaled_count} upscaled; "
                         "originals kept)")
    return 0
