"""The Kiln client: the public API's stubs over one channel to the gateway, and the helpers people
reach for (upload a folder, follow a job, download an epoch)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from kiln import artifacts, curation, jobs, training_config, uploads
from kiln.channel import Target, open_channel
from kiln.errors import KilnError
from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import dataset_pb2_grpc, trainer_pb2_grpc, webhooks_pb2_grpc
from kiln.v1 import trainer_pb2 as tpb

URL_VARIABLE = "KILN_URL"
KEY_VARIABLE = "KILN_API_KEY"
FAMILIES = {"sd15": dpb.MODEL_FAMILY_SD15, "sdxl": dpb.MODEL_FAMILY_SDXL}
ROLES = {"training": dpb.IMAGE_ROLE_TRAINING, "regularization": dpb.IMAGE_ROLE_REGULARIZATION}

FamilyArg = str | int
RoleArg = str | int
PathArg = str | os.PathLike[str]


def family_of(value: FamilyArg) -> dpb.ModelFamily.ValueType:
    """"sd15", "sdxl", "MODEL_FAMILY_SDXL" or the enum's number."""
    if isinstance(value, int):
        return dpb.ModelFamily.ValueType(value)
    key = value.lower().removeprefix("model_family_").replace(".", "").replace("-", "")
    if key not in FAMILIES:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown model family {value!r}",
                        [("family", "one of: " + ", ".join(FAMILIES))])
    return FAMILIES[key]


def role_of(value: RoleArg) -> dpb.ImageRole.ValueType:
    """"training", "regularization", "IMAGE_ROLE_TRAINING" or the enum's number."""
    if isinstance(value, int):
        return dpb.ImageRole.ValueType(value)
    key = value.lower().removeprefix("image_role_")
    if key not in ROLES:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown image role {value!r}",
                        [("role", "one of: " + ", ".join(ROLES))])
    return ROLES[key]


def visibility_of(value: str | int) -> tpb.Model.Visibility.ValueType:
    """"private", "tenant", "public", "VISIBILITY_PUBLIC" or the enum's number."""
    if isinstance(value, int):
        return tpb.Model.Visibility.ValueType(value)
    key = value.upper() if value.upper().startswith("VISIBILITY_") else f"VISIBILITY_{value.upper()}"
    if key == "VISIBILITY_UNSPECIFIED" or key not in set(tpb.Model.Visibility.keys()):
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown visibility {value!r}",
                        [("visibility", "one of: private, tenant, public")])
    return tpb.Model.Visibility.Value(key)


def resource(collection: str, name: str) -> str:
    """`abc` or `datasets/abc` → `datasets/abc`: the id alone is enough where the kind is known."""
    return name if "/" in name else f"{collection}/{name}"


class Client:
    """Calls the gateway at `url` ("host:port", "grpc://…", "grpcs://…" for TLS; default $KILN_URL)
    with `api_key` (default $KILN_API_KEY). Every call raises KilnError when it fails."""

    def __init__(self, url: str | None = None, api_key: str | None = None) -> None:
        url = url or os.environ.get(URL_VARIABLE, "")
        api_key = api_key or os.environ.get(KEY_VARIABLE, "")
        missing = [(arg, f"pass {arg}=… or set {variable}") for arg, variable, value in
                   (("url", URL_VARIABLE, url), ("api_key", KEY_VARIABLE, api_key)) if not value]
        if missing:
            code = grpc.StatusCode.UNAUTHENTICATED if not api_key else grpc.StatusCode.INVALID_ARGUMENT
            raise KilnError(code, "the client needs the gateway's address and an API key: "
                            + " and ".join(arg for arg, _ in missing) + " missing", missing,
                            hint=f"Client(url='host:port', api_key='kiln_…'), or set {URL_VARIABLE} and "
                                 f"{KEY_VARIABLE} (an operator creates keys with `kiln keys create`)")
        self.target = Target.parse(url)
        self._raw_channel, self.channel = open_channel(self.target, api_key)
        self.datasets = dataset_pb2_grpc.DatasetServiceStub(self.channel)
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # ---------------------------------------------------------------- datasets and images

    def create_dataset(self, display_name: str, family: FamilyArg = "sd15", default_repeat: int = 0,
                       description: str = "", request_id: str = "") -> dpb.Dataset:
        dataset = dpb.Dataset(display_name=display_name, family=family_of(family), default_repeat=default_repeat,
                              description=description)
        return self.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dataset, request_id=request_id))

    def get_dataset(self, name: str) -> dpb.Dataset:
        return self.datasets.GetDataset(dpb.GetDatasetRequest(name=resource("datasets", name)))

    def list_datasets(self) -> Iterator[dpb.Dataset]:
        token = ""
        while True:
            page = self.datasets.ListDatasets(dpb.ListDatasetsRequest(page_size=100, page_token=token))
            yield from page.datasets
            token = page.next_page_token
            if not token:
                return

    def list_images(self, dataset: str, role: RoleArg = dpb.IMAGE_ROLE_UNSPECIFIED) -> Iterator[dpb.Image]:
        token = ""
        while True:
            page = self.datasets.ListImages(dpb.ListImagesRequest(
                parent=resource("datasets", dataset), role=role_of(role), page_size=1000, page_token=token))
            yield from page.images
            token = page.next_page_token
            if not token:
                return

    def upload_file(self, dataset: str, path: PathArg, role: RoleArg = dpb.IMAGE_ROLE_TRAINING) -> dpb.Image:
        """One PNG/JPEG file (with the tags of a caption .txt beside it); a retry is idempotent."""
        return uploads.upload_image(self.datasets, resource("datasets", dataset),
                                    uploads.local_image(uploads.as_path(path)), role_of(role))

    def upload_folder(self, dataset: str, folder: PathArg, role: RoleArg = dpb.IMAGE_ROLE_TRAINING,
                      progress: bool = True) -> list[dpb.Image]:
        """The folder's PNG/JPEG files the dataset doesn't hold yet (by sha256), with a progress bar;
        returns the images uploaded now. A folder with other files is refused before any upload."""
        return uploads.upload_folder(self.datasets, self.list_images, resource("datasets", dataset),
                                     uploads.as_path(folder), role_of(role), progress)

    def crop_images(self, dataset: str, mode: str = "focus", width: int = 0, height: int = 0,
                    images: Sequence[str] = (), progress: bool = True) -> dpb.CropImagesResponse:
        """Crops the dataset's images (or `images`) around their subject ("focus") or in the middle
        ("center") to a training size (default: the family's square), with a progress bar; the summary."""
        return curation.crop_images(self.datasets, self.get_dataset(dataset), mode, width, height, images, progress)

    def wait_for_tagging(self, dataset: str, timeout: float = 300.0, progress: bool = True) -> list[dpb.Image]:
        """Waits until the background tagger has answered for every image of the dataset; its images."""
        return curation.wait_for_tagging(lambda: list(self.list_images(dataset)), timeout, progress)

    def add_tag(self, dataset: str, tag: str, head: bool = False, images: Sequence[str] = ()) -> int:
        """Adds `tag` to every caption (or those of `images`): at the head for a trigger word. How
        many captions changed."""
        edit = dpb.BatchEditTagsRequest.AddTag(tag=tag, position=dpb.TAG_POSITION_HEAD if head else
                                               dpb.TAG_POSITION_TAIL)
        return self.datasets.BatchEditTags(dpb.BatchEditTagsRequest(
            parent=resource("datasets", dataset), names=images, add=edit)).changed_count

    def set_repeat(self, image: str, repeat: int) -> dpb.Image:
        """The image's own repeat (0: the dataset's default)."""
        return self.datasets.UpdateImage(dpb.UpdateImageRequest(image=dpb.Image(name=image, repeat=repeat),
                                                                update_mask=FieldMask(paths=["repeat"])))

    # ---------------------------------------------------------------- training

    def create_job(self, dataset: str, preset: str = "", *, epochs: int | None = None, repeat: int | None = None,
                   preview_prompt: str | None = None, config: tpb.TrainingConfig | None = None,
                   display_name: str = "", validate_only: bool = False, request_id: str = "") -> tpb.TrainingJob:
        """A training of the dataset (snapshotted now) with a preset and its basic settings, and/or
        pro-mode `config` fields. `validate_only` answers with the estimate and queues nothing."""
        basic = tpb.BasicSettings(epochs=epochs, repeat=repeat, preview_prompt=preview_prompt)
        job = tpb.TrainingJob(display_name=display_name, dataset=resource("datasets", dataset),
                              preset=resource("presets", preset) if preset else "", basic=basic, config=config)
        return self.trainer.CreateTrainingJob(tpb.CreateTrainingJobRequest(
            training_job=job, validate_only=validate_only, request_id=request_id))

    def get_job(self, name: str) -> tpb.TrainingJob:
        return self.trainer.GetTrainingJob(tpb.GetTrainingJobRequest(name=resource("trainingJobs", name)))

    def watch_job(self, name: str, after_seq: int = 0) -> Iterator[tpb.TrainingEvent]:
        """The job's events after `after_seq` until its final one; a dropped stream is resumed from the
        last event seen, so none is missed or repeated."""
        return jobs.watch_job(self.trainer, resource("trainingJobs", name), after_seq)

    def wait_for_job(self, name: str, progress: bool = True) -> tpb.TrainingJob:
        """Follows the job with a progress bar (loss and epoch beside it, saved epochs printed) and
        returns it once over; a FAILED job raises JobFailed with its reason."""
        return jobs.wait_for_job(self.trainer, resource("trainingJobs", name), progress)

    def download_epoch(self, job: str, epoch: int, path: PathArg) -> pathlib.Path:
        """The LoRA the job saved at `epoch`, written to `path` (a folder: a file named after the job),
        checked against its sha256."""
        found = self.get_job(job)
        result = artifacts.epoch_result(found, epoch)
        target = uploads.as_path(path)
        if target.is_dir():
            target = target / artifacts.epoch_file_name(found, epoch)
        saved, _ = artifacts.save_artifact(self.trainer, result.lora.name, target, result.lora.sha256)
        return saved

    def retrain_job(self, name: str, overrides: Mapping[str, Any] | None = None, validate_only: bool = False,
                    request_id: str = "") -> tpb.TrainingJob:
        """A new job from `name`'s snapshot and configuration with `overrides` by field path, e.g.
        {"config.epochs": 3, "config.preview.prompt": "a cat"}."""
        job, paths = training_config.overrides_of(dict(overrides or {}))
        return self.trainer.RetrainTrainingJob(tpb.RetrainTrainingJobRequest(
            name=resource("trainingJobs", name), training_job=job, update_mask=FieldMask(paths=paths),
            validate_only=validate_only, request_id=request_id))

    def generate_images(self, job: str, folder: PathArg, *, epochs: Sequence[int] = (),
                        strengths: Sequence[float] = (), prompts: Sequence[str] = (), negative_prompt: str = "",
                        seed: int | None = None, steps: int = 0, width: int = 0, height: int = 0, count: int = 0,
                        on_saved: Callable[[pathlib.Path], None] | None = None) -> list[pathlib.Path]:
        """Test images of saved epochs (several epochs, strengths or prompts: a comparison grid, whose
        sheet comes last), each saved into `folder` as it finishes; the files."""
        request = tpb.GenerateImagesRequest(
            training_job=resource("trainingJobs", job), epochs=epochs, strengths=strengths, prompts=prompts,
            negative_prompt=negative_prompt, seed=seed, steps=steps, width=width, height=height, count=count)
        return artifacts.generate(self.trainer, request, uploads.as_path(folder), on_saved)

    def publish_model(self, job: str, epoch: int, display_name: str, *, description: str = "",
                      trigger_words: Sequence[str] = (), visibility: str | int = "private",
                      showcase_previews: Sequence[int] = (), request_id: str = "") -> tpb.Model:
        """Publishes one saved epoch of a job as a model ("private", "tenant" or "public")."""
        model = tpb.Model(display_name=display_name, description=description, trigger_words=trigger_words,
                          visibility=visibility_of(visibility), training_job=resource("trainingJobs", job),
                          epoch=epoch, showcase_previews=showcase_previews)
        return self.trainer.CreateModel(tpb.CreateModelRequest(model=model, request_id=request_id))

    def save_artifact(self, name: str, path: PathArg) -> pathlib.Path:
        """Any artifact (a preview, a generated image, a sheet) streamed to `path`, checked against its sha256."""
        saved, _ = artifacts.save_artifact(self.trainer, name, uploads.as_path(path))
        return saved
