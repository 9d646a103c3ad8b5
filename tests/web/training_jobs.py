"""Training jobs the training, test and publish pages' tests arrange through the API: a dataset of a
few bundled samples, a tiny job that finishes in well under a minute (shared by the modules that
only need a finished job), and a slow one for the live controls, cancelled by its test."""

from __future__ import annotations

from kiln import Client
from kiln.v1 import trainer_pb2 as tpb
from tests.web import samples

PRESET = "presets/demo-tiny-sd15"
TRIGGER = "webtrigger"
PREVIEWS_PER_EPOCH = 4
FAST_EPOCHS = 2
_SAMPLES = 3

# The stack is one per session, and so is the finished job the test and publish pages share.
_finished: dict[str, tpb.TrainingJob] = {}
_datasets: dict[str, str] = {}


def dataset_of_samples(api: Client) -> str:
    """A dataset of a few bundled sample photos, tagged and screened (a snapshot waits for that),
    the trigger word at the head of every caption; made once per session."""
    key = api_key(api)
    if key not in _datasets:
        photos = samples.first_samples(_SAMPLES)
        _datasets[key] = samples.dataset_of_samples(api, "Web training", photos, head_tag=TRIGGER)
    return _datasets[key]


def api_key(api: Client) -> str:
    return str(id(api))


def fast_config() -> tpb.TrainingConfig:
    """64 px, batches of one, four two-step 64 px previews an epoch: seconds of CPU an epoch."""
    return tpb.TrainingConfig(
        resolution=tpb.Resolution(width=64, height=64), batch_size=1, seed=7, cache_latents=True,
        preview=tpb.PreviewConfig(count=PREVIEWS_PER_EPOCH, steps=2, width=64, height=64))


def slow_config() -> tpb.TrainingConfig:
    """Thousands of steps (a repeat of 50 over 20 epochs) and one preview an epoch: it runs long
    enough to reload the page, go offline and use the controls mid-run, even on a fast machine; its
    test cancels it."""
    return tpb.TrainingConfig(
        resolution=tpb.Resolution(width=64, height=64), batch_size=1, seed=7, cache_latents=True, repeat=50,
        preview=tpb.PreviewConfig(count=1, steps=2, width=64, height=64))


def start_fast_job(api: Client, display_name: str = "Web fast") -> tpb.TrainingJob:
    return api.create_job(dataset_of_samples(api), PRESET, epochs=FAST_EPOCHS, repeat=1,
                          preview_prompt=f"{TRIGGER}, smile", config=fast_config(), display_name=display_name)


def start_slow_job(api: Client) -> tpb.TrainingJob:
    return api.create_job(dataset_of_samples(api), PRESET, epochs=20, preview_prompt=f"{TRIGGER}, smile",
                          config=slow_config(), display_name="Web slow")


def finished_job(api: Client) -> tpb.TrainingJob:
    """A tiny job that trained to its end (two epochs, four previews each), made once per session."""
    key = api_key(api)
    if key not in _finished:
        job = start_fast_job(api, "Web finished")
        _finished[key] = api.wait_for_job(job.name, progress=False)
    return _finished[key]


def job_path(job: tpb.TrainingJob, tab: str) -> str:
    return f"/#/jobs/{job.name.removeprefix('trainingJobs/')}/{tab}"


def events_of(api: Client, job: str) -> list[tpb.TrainingEvent]:
    return list(api.watch_job(job))
