"""`kiln jobs create|list|get|watch|cancel|retrain|download|delete`."""

from __future__ import annotations

import argparse
import pathlib

from kiln.cli import describe
from kiln.cli.context import Context
from kiln.client import FAMILIES, family_of, resource
from kiln.jobs import describe_epoch
from kiln.training_config import load_config, parse_assignments
from kiln.v1 import trainer_pb2 as tpb

State = tpb.TrainingJob.State
STATES = {describe.job_state(value): value for value in State.values() if value}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    presets = commands.add_parser("presets", parents=[common], help="the training presets and their base models")
    presets.add_argument("--family", choices=sorted(FAMILIES))
    presets.set_defaults(run=list_presets)
    group = commands.add_parser("jobs", help="training jobs").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    create = group.add_parser("create", parents=[common],
                              help="train a LoRA on a dataset: a preset and basic settings, or a config file")
    create.add_argument("dataset", help="datasets/ID or ID (snapshotted now)")
    create.add_argument("--preset", default="", help="e.g. demo-tiny-sd15, anime-character-sdxl (see `kiln presets`)")
    create.add_argument("--epochs", type=int)
    create.add_argument("--repeat", type=int)
    create.add_argument("--preview-prompt")
    create.add_argument("--name", default="", help="a display name")
    create.add_argument("--config", type=pathlib.Path,
                        help="a .toml or .json file of TrainingConfig fields (kohya's names), over the preset")
    create.add_argument("--request-id", default="", help="makes a retry of this command idempotent")
    create.add_argument("--validate-only", action="store_true",
                        help="check the settings and print the estimate; queue nothing")
    create.add_argument("--watch", action="store_true", help="follow the job to its end")
    create.set_defaults(run=create_job)

    listing = group.add_parser("list", parents=[common], help="your jobs, oldest first")
    listing.add_argument("--state", dest="states", action="append", choices=sorted(STATES), default=[])
    listing.set_defaults(run=list_jobs)
    for action, run, text in (("get", get_job, "one job"), ("cancel", cancel_job, "stop a job (saved epochs stay)"),
                              ("delete", delete_job, "a job that isn't running, with its artifacts")):
        parser = group.add_parser(action, parents=[common], help=text)
        parser.add_argument("job", help="trainingJobs/ID or ID")
        parser.set_defaults(run=run)
    watch = group.add_parser("watch", parents=[common], help="follow a job with a progress bar (--json: events)")
    watch.add_argument("job", help="trainingJobs/ID or ID")
    watch.add_argument("--after-seq", type=int, default=0, help="only events after this one (with --json)")
    watch.set_defaults(run=watch_job)

    retrain = group.add_parser("retrain", parents=[common], help="a new job from an old one, with overrides")
    retrain.add_argument("job", help="trainingJobs/ID or ID")
    retrain.add_argument("--set", dest="assignments", action="append", default=[], metavar="FIELD=VALUE",
                         help="e.g. --set config.epochs=3 --set config.preview.prompt='a cat' (repeatable)")
    retrain.add_argument("--request-id", default="")
    retrain.add_argument("--validate-only", action="store_true")
    retrain.add_argument("--watch", action="store_true")
    retrain.set_defaults(run=retrain_job)

    download = group.add_parser("download", parents=[common], help="an epoch's LoRA file")
    download.add_argument("job", help="trainingJobs/ID or ID")
    download.add_argument("--epoch", type=int, help="default: the last saved")
    download.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."), help="a file or a folder")
    download.set_defaults(run=download_epoch)


def list_presets(ctx: Context) -> int:
    family = family_of(ctx.args.family) if ctx.args.family else 0
    found = ctx.client.trainer.ListPresets(tpb.ListPresetsRequest(family=family))  # type: ignore[arg-type]
    ctx.out.result(found, [f"{p.name:28} {p.display_name}  (base models: {', '.join(p.base_models)})"
                           for p in found.presets])
    return 0


def _created(ctx: Context, job: tpb.TrainingJob, validate_only: bool, watch: bool) -> int:
    if validate_only:
        ctx.out.result(job, ["valid; nothing was queued", *describe.estimate(job.estimate)])
        return 0
    ctx.out.result(job, [f"queued {describe.job(job)}", *describe.estimate(job.estimate)])
    return _follow(ctx, job.name) if watch else 0


def create_job(ctx: Context) -> int:
    args = ctx.args
    config = load_config(args.config) if args.config else None
    job = ctx.client.create_job(args.dataset, args.preset, epochs=args.epochs, repeat=args.repeat,
                                preview_prompt=args.preview_prompt, config=config, display_name=args.name,
                                validate_only=args.validate_only, request_id=args.request_id)
    return _created(ctx, job, args.validate_only, args.watch)


def retrain_job(ctx: Context) -> int:
    args = ctx.args
    job = ctx.client.retrain_job(args.job, parse_assignments(args.assignments), args.validate_only,
                                 args.request_id)
    return _created(ctx, job, args.validate_only, args.watch)


def list_jobs(ctx: Context) -> int:
    found: list[tpb.TrainingJob] = []
    token = ""
    while True:
        page = ctx.client.trainer.ListTrainingJobs(tpb.ListTrainingJobsRequest(
            page_size=100, page_token=token, states=[STATES[s] for s in ctx.args.states]))
        found += page.training_jobs
        token = page.next_page_token
        if not token:
            break
    ctx.out.result({"trainingJobs": found}, [describe.job(j) for j in found] or ["no jobs"])
    return 0


def get_job(ctx: Context) -> int:
    job = ctx.client.get_job(ctx.args.job)
    ctx.out.result(job, [describe.job(job), *(f"  {describe_epoch(e)}" for e in job.epochs)])
    return 0


def cancel_job(ctx: Context) -> int:
    job = ctx.client.trainer.CancelTrainingJob(tpb.CancelTrainingJobRequest(name=resource("trainingJobs",
                                                                                          ctx.args.job)))
    ctx.out.result(job, describe.job(job))
    return 0


def delete_job(ctx: Context) -> int:
    name = resource("trainingJobs", ctx.args.job)
    ctx.client.trainer.DeleteTrainingJob(tpb.DeleteTrainingJobRequest(name=name))
    ctx.out.result({"deleted": name}, f"deleted {name}")
    return 0


def _follow(ctx: Context, name: str, after_seq: int = 0) -> int:
    """Exit status 0 when the job succeeded."""
    if ctx.out.json:
        state = State.STATE_UNSPECIFIED
        for event in ctx.client.watch_job(name, after_seq):
            ctx.out.line(event)
            if event.HasField("finished"):
                state = event.finished.state
        if state == State.STATE_UNSPECIFIED:  # watched after the final event: the job says how it ended
            state = ctx.client.get_job(name).state
        return 0 if state == State.STATE_SUCCEEDED else 1
    job = ctx.client.wait_for_job(name, progress=ctx.progress)
    print(describe.job(job))
    return 0 if job.state == State.STATE_SUCCEEDED else 1


def watch_job(ctx: Context) -> int:
    return _follow(ctx, resource("trainingJobs", ctx.args.job), ctx.args.after_seq)


def download_epoch(ctx: Context) -> int:
    args = ctx.args
    epoch = args.epoch
    if epoch is None:
        saved = [e.epoch for e in ctx.client.get_job(args.job).epochs if not e.on_request]
        epoch = saved[-1] if saved else 0
    path = ctx.client.download_epoch(args.job, epoch, args.out)
    ctx.out.result({"job": resource("trainingJobs", args.job), "epoch": epoch, "path": str(path)},
                   f"epoch {epoch}'s LoRA: {path}")
    return 0
