"""`make demo`: Kiln's main job on embedded defaults, end to end, printing what it does.

Starts a real S3 server (embedded SeaweedFS), the tagger service (the built-in
offline tagger) and the dataset service on SQLite, then plays a user's session
through gRPC: create a dataset, upload sample photos, watch them get tagged and
screened in the background, focus-crop them, add a trigger word, set repeats,
read the tag statistics, freeze a snapshot, and train a LoRA on it (the
built-in tiny SD1.5, on the CPU) with four preview images per epoch. It leaves
contact sheets of the crops and of the previews to look at.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import pathlib
import secrets
import tempfile
from collections.abc import Callable, Iterator

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from PIL import Image
from pydantic import SecretStr
from tqdm import tqdm

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from kiln.v1 import tagging_types_pb2 as ttpb
from services.common import object_keys
from services.common.bundled_data import samples_dir
from services.common.internal_client import internal_channel
from services.common.objectstore import ObjectStore
from services.common.settings import InternalAuthSettings, ServerSettings
from services.common.storage_runtime import open_store
from services.dataset.server import running_dataset_service
from services.dataset.settings import DatasetSettings
from services.tagger.server import running_tagger_service
from services.tagger.settings import TaggerSettings
from services.trainer.settings import TrainerSettings

CHUNK = 1024 * 1024
TRIGGER = "kilnsample"


def say(text: str) -> None:
    tqdm.write(text)


def upload_file(stub: dataset_pb2_grpc.DatasetServiceStub, parent: str, path: pathlib.Path) -> pb.Image:
    data = path.read_bytes()

    def messages() -> Iterator[pb.UploadImageRequest]:
        yield pb.UploadImageRequest(metadata=pb.UploadImageMetadata(
            parent=parent, role=pb.IMAGE_ROLE_TRAINING, filename=path.name, size_bytes=len(data),
            request_id=f"demo-{path.name}"))
        for start in range(0, len(data), CHUNK):
            yield pb.UploadImageRequest(chunk=data[start:start + CHUNK])

    return stub.UploadImage(messages())


def read_variant(stub: dataset_pb2_grpc.DatasetServiceStub, name: str, variant: pb.ImageVariant.ValueType
                 ) -> Image.Image:
    responses = list(stub.ReadImage(pb.ReadImageRequest(name=name, variant=variant)))
    return Image.open(io.BytesIO(b"".join(r.chunk for r in responses[1:])))


def save_sheet(rows: list[tuple[str, list[Image.Image]]], path: pathlib.Path) -> None:
    from services.trainer.engine.previews import contact_sheet

    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, cell=256).save(path)


def train_on_snapshot(store: ObjectStore, snapshot: pb.Snapshot, out_dir: pathlib.Path, models_dir: pathlib.Path
                      ) -> None:
    """What a trainer worker does with a job: a LoRA on the snapshot, previews per epoch."""
    # Imported here: the ML stack takes seconds to load and the dataset part doesn't need it.
    from services.trainer.engine.config import parse_config
    from services.trainer.engine.model_store import ModelStore
    from services.trainer.engine.object_store_io import ObjectStoreReader, ObjectStoreWriter
    from services.trainer.engine.progress import ProgressEvent
    from services.trainer.engine.snapshot import load_snapshot
    from services.trainer.engine.trainer import train

    config = parse_config({
        "base_model": "tiny-sd15", "epochs": 2, "batch_size": 2, "cache_latents": True,
        "network_dim": 8, "network_alpha": 4, "unet_lr": 1e-3, "text_encoder_lr": 5e-4, "seed": 42,
        "preview": {"count": 4, "steps": 10, "prompt": f"{TRIGGER}, 1girl, smile", "sampler": "euler_a",
                    "width": 256, "height": 256},
    })
    reader = ObjectStoreReader(store)
    # A trainer worker's job: the snapshot's manifest is found from its name, the outputs go under the job.
    prefix = object_keys.training_job_prefix(f"demo-{snapshot.sha256[:12]}").rstrip("/")
    bar = tqdm(desc="training tiny-sd15 LoRA", unit="step")

    def on_progress(event: ProgressEvent) -> None:
        bar.total = event.total_steps
        bar.n = event.step
        if event.smoothed_loss is not None:
            bar.set_postfix(epoch=f"{event.epoch}/{event.total_epochs}", loss=f"{event.smoothed_loss:.4f}",
                            phase=event.phase)
        bar.refresh()

    dataset = load_snapshot(reader, object_keys.manifest_key_of(snapshot.name))
    result = train(config, dataset, reader, ObjectStoreWriter(store, prefix), store=ModelStore(models_dir),
                   progress=on_progress)
    bar.close()
    rows: list[tuple[str, list[Image.Image]]] = [
        (f"epoch {epoch}", [Image.open(io.BytesIO(store.get_bytes(f"{prefix}/epochs/{epoch}/previews/{k}.png")))
                            for k in range(4)]) for epoch in result.saved_epochs]
    for epoch in result.saved_epochs:
        size = len(store.get_bytes(f"{prefix}/epochs/{epoch}/lora.safetensors"))
        say(f"  epoch {epoch}: s3://…/{prefix}/epochs/{epoch}/lora.safetensors ({size / 1024:.0f} KiB, kohya format)")
    sheet = out_dir / "demo-previews.png"
    save_sheet(rows, sheet)
    say(f"preview images of each epoch (prompt {config.preview.prompt!r}): {sheet}")


def scenario(channel: grpc.Channel, store: ObjectStore, out_dir: pathlib.Path, models_dir: pathlib.Path,
             settle: Callable[[], None]) -> None:
    with channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        dataset = stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
            display_name="Demo character", family=pb.MODEL_FAMILY_SD15, default_repeat=2)))
        say(f"created {dataset.name} (SD1.5, default repeat {dataset.default_repeat})")

        files = sorted(p for p in samples_dir().iterdir() if p.suffix in (".png", ".jpg"))
        images = [upload_file(stub, dataset.name, f) for f in tqdm(files, desc="upload", unit="img")]
        for image in images:
            say(f"  {image.filename:22s} {image.width}x{image.height} {image.content_type:10s} "
                f"sha256 {image.sha256[:12]}…  tagging {pb.TaggingState.Name(image.auto_tagging.state)}")
        say("waiting for background tagging and screening…")
        settle()
        for image in stub.ListImages(pb.ListImagesRequest(parent=dataset.name)).images:
            verdict = ttpb.ModerationDecision.Name(image.screening.decision).removeprefix("MODERATION_DECISION_")
            tags = ", ".join(f"{t.name} {t.score:.2f}" for t in image.auto_tagging.tags[:5]) or "(no tags)"
            say(f"  {image.filename:22s} [{verdict.lower()}] {tags}")

        upscaled = 0
        progress = tqdm(total=len(images), desc="focus crop 512x512", unit="img")
        for event in stub.CropImages(pb.CropImagesRequest(parent=dataset.name, mode=pb.CROP_MODE_FOCUS,
                                                          target_width=512, target_height=512)):
            progress.n = event.done
            progress.refresh()
            upscaled = event.upscaled_count
        progress.close()
        say(f"cropped {len(images)} images, {upscaled} upscaled (originals kept)")

        for image, reviewed in zip(images, (["smile", "spacesuit"], ["camera"], ["cat", "whiskers"], ["coffee cup"],
                                            ["motorcycle"], ["rocket", "night"]), strict=False):
            stub.AddImageTags(pb.AddImageTagsRequest(name=image.name, tags=reviewed))
        say("reviewed captions by hand (the seed: no tagger is 100% right)")
        changed = stub.BatchEditTags(pb.BatchEditTagsRequest(
            parent=dataset.name, add=pb.BatchEditTagsRequest.AddTag(tag=TRIGGER, position=pb.TAG_POSITION_HEAD)))
        say(f"trigger word {TRIGGER!r} added at the head of {changed.changed_count} captions")
        stub.UpdateImage(pb.UpdateImageRequest(image=pb.Image(name=images[0].name, repeat=4),
                                               update_mask=FieldMask(paths=["repeat"])))
        stats = stub.GetTagStatistics(pb.GetTagStatisticsRequest(parent=dataset.name))
        say("tag frequency: " + ", ".join(f"{t.tag} x{t.count}" for t in stats.tags[:8]))

        listed = stub.ListImages(pb.ListImagesRequest(parent=dataset.name))
        for image in listed.images:
            box = image.crop.box
            say(f"  {image.filename:22s} crop {box.width}x{box.height}+{box.left}+{box.top} → "
                f"{image.crop.target_width}x{image.crop.target_height}  repeat {image.effective_repeat:2d}  "
                f"\"{', '.join(image.tags)}\"")
        dataset = stub.GetDataset(pb.GetDatasetRequest(name=dataset.name))
        say(f"{dataset.training_image_count} training images x repeats = {dataset.total_repeated_images} "
            "samples per epoch")

        snapshot = stub.CreateSnapshot(pb.CreateSnapshotRequest(parent=dataset.name))
        say(f"snapshot {snapshot.name} ({snapshot.training_image_count} images), its manifest at "
            f"s3://…/{object_keys.manifest_key_of(snapshot.name)}")

        sheet = out_dir / "demo-crops.png"
        save_sheet([("focus crops, 512x512", [read_variant(stub, i.name, pb.IMAGE_VARIANT_CROPPED)
                                              for i in listed.images])], sheet)
        say(f"contact sheet of the crops: {sheet}")
        train_on_snapshot(store, snapshot, out_dir, models_dir)


async def run(data_dir: pathlib.Path, out_dir: pathlib.Path, models_dir: pathlib.Path) -> None:
    server = ServerSettings(port=0, shutdown_grace=2.0)
    # The services trust each other through one credential, as in production; the demo makes
    # a fresh one and is their only client, as the gateway would be.
    auth = InternalAuthSettings(token=SecretStr(secrets.token_urlsafe(32)))
    say(f"starting embedded S3 (SeaweedFS), the tagger and the dataset service; data in {data_dir}")
    handle = await asyncio.to_thread(open_store, DatasetSettings().s3, data_dir)
    tagger_settings = TaggerSettings(data_dir=data_dir, server=server, json_logs=False, log_level="WARNING",
                                     internal_auth=auth)
    try:
        async with running_tagger_service(tagger_settings, handle.store) as tagger:
            say(f"tagger service listening on {tagger.address} (built-in offline tagger)")
            settings = DatasetSettings(data_dir=data_dir, server=server, json_logs=False, log_level="WARNING",
                                       tagger_address=tagger.address, internal_auth=auth)
            async with running_dataset_service(settings, handle.store) as service:
                say(f"dataset service listening on {service.address}")
                loop = asyncio.get_running_loop()
                worker = service.servicer.tagging
                assert worker is not None

                def settle() -> None:
                    asyncio.run_coroutine_threadsafe(worker.until_idle(), loop).result(300)

                await asyncio.to_thread(scenario, internal_channel(service.address, auth), handle.store, out_dir,
                                        models_dir, settle)
    finally:
        await asyncio.to_thread(handle.close)
    say("services stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="where the object store and database live (default: a fresh temporary folder)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("var/demo"),
                        help="where the contact sheet goes")
    parser.add_argument("--models-dir", type=pathlib.Path, default=None,
                        help="base-model store, where tiny-sd15 is built once (default: $KILN_MODELS_DIR or "
                             "~/.cache/kiln/models)")
    args = parser.parse_args()
    models_dir = args.models_dir or TrainerSettings().models_dir
    from services.common.logs import configure_logging

    configure_logging("WARNING", json_logs=False)
    # Import-time notices about optional accelerators this CPU demo doesn't use.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if args.data_dir is None:
        with tempfile.TemporaryDirectory(prefix="kiln-demo-") as tmp:
            asyncio.run(run(pathlib.Path(tmp), args.out, models_dir))
    else:
        asyncio.run(run(args.data_dir, args.out, models_dir))


if __name__ == "__main__":
    main()
