"""One-line descriptions of resources, for people."""

from __future__ import annotations

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import tagging_types_pb2 as ttpb
from kiln.v1 import trainer_pb2 as tpb


def enum_word(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def dataset(d: dpb.Dataset) -> str:
    family = enum_word(dpb.ModelFamily.Name(d.family), "MODEL_FAMILY_")
    regularization = f" (+{d.regularization_image_count} regularization)" if d.regularization_image_count else ""
    return (f"{d.name}  {d.display_name!r}  {family}  {d.training_image_count} images{regularization}  "
            f"default repeat {d.default_repeat}  {d.total_repeated_images} samples per epoch")


def image(i: dpb.Image) -> str:
    tagging = enum_word(dpb.TaggingState.Name(i.auto_tagging.state), "TAGGING_STATE_")
    crop = f"  crop {i.crop.target_width}x{i.crop.target_height}" if i.HasField("crop") else ""
    screening = ""
    if i.HasField("screening"):
        screening = "  " + enum_word(ttpb.ModerationDecision.Name(i.screening.decision), "MODERATION_DECISION_")
    return (f"{i.name}  {i.filename}  {i.width}x{i.height}{crop}  repeat {i.effective_repeat}  "
            f"tagging {tagging}{screening}  \"{', '.join(i.tags)}\"")


def job_state(state: int) -> str:
    return enum_word(tpb.TrainingJob.State.Name(state), "STATE_")  # type: ignore[arg-type]


def job(j: tpb.TrainingJob) -> str:
    progress = j.progress
    parts = [j.name, job_state(j.state), repr(j.display_name) if j.display_name else "",
             j.config.base_model, f"step {progress.step}/{progress.total_steps or j.estimate.total_steps}",
             f"epoch {progress.epoch}/{progress.total_epochs or j.config.epochs}"]
    if j.state == tpb.TrainingJob.STATE_QUEUED and j.queue_position:
        parts.append(f"queue position {j.queue_position}")
    if j.epochs:
        parts.append("saved epochs " + ",".join(str(e.epoch) for e in j.epochs))
    if j.state == tpb.TrainingJob.STATE_FAILED:
        parts.append(f"error: {j.error.message}")
    return "  ".join(part for part in parts if part)


def estimate(e: tpb.TrainingEstimate) -> list[str]:
    lines = [f"{e.total_steps} steps: {e.steps_per_epoch} per epoch x {e.epochs} epochs "
             f"(images x repeat x epochs / batch size = {e.formula_steps})",
             f"{e.training_images} training images, {e.regularization_images} regularization, "
             f"{e.resolution.width}x{e.resolution.height}",
             f"about {e.gpu_seconds:.0f} s on the reference GPU"]
    if e.buckets:
        lines.append("buckets: " + ", ".join(f"{size} x{count}" for size, count in sorted(e.buckets.items())))
    lines += [f"warning: {warning}" for warning in e.warnings]
    return lines


def model(m: tpb.Model) -> str:
    visibility = enum_word(tpb.Model.Visibility.Name(m.visibility), "VISIBILITY_")
    words = f"  trigger words {', '.join(m.trigger_words)}" if m.trigger_words else ""
    return (f"{m.name}  {m.display_name!r}  {visibility}  epoch {m.epoch} of {m.training_job}  "
            f"{m.base_model}{words}")
