"""The process a job trains in: started before the job arrives, with the libraries imported, so
a claimed job reaches its first step without paying for the imports.

It talks to its worker over a pipe. Worker -> child: any number of `("generate", spec)` and
`("preload", base_model)` (the base model loaded ahead, for a job that names it), then
`("job", spec)`, then any of `("cancel",)` and `("control", name)`. Child -> worker:
`("ready", capabilities)`, then the run's `("progress", fields)`, `("epoch", fields)`,
`("previews", fields)`, `("log", level, text)` and one final `("done", outcome, message)`. When
the worker goes away (killed, even with -9) the pipe closes and the child exits at once: a job
has one trainer at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

Send = Callable[[tuple[Any, ...]], None]
_SAVED = re.compile(r"^(epochs|steps)/(\d+)/(lora\.safetensors|previews/(\d+)\.png|checkpoint\.pt|previews\.json)$")
THUMBNAIL_SIDE = 128


def child_main(conn: Connection, models_dir: str, s3_settings: Any) -> None:
    """Entry point of the spawned process."""
    # Before anything else: the imports below take seconds, during which the pipe isn't read.
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    # The heavy imports first: this is what the warm process saves a claimed job.
    import psutil
    import torch

    from services.common.objectstore import ObjectStore
    from services.trainer.engine import trainer as _trainer  # noqa: F401  (imports diffusers, peft)
    from services.trainer.engine.model_libraries import disable_library_progress_bars

    # The worker's output is its log: no loading bars of the model libraries in it.
    disable_library_progress_bars()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    memory = (torch.cuda.get_device_properties(0).total_memory if device == "cuda"
              else psutil.virtual_memory().total)
    conn.send(("ready", {"device": device, "memory_bytes": int(memory)}))
    store = ObjectStore(s3_settings)
    lock = threading.Lock()

    def send(item: tuple[Any, ...]) -> None:
        with lock:
            conn.send(item)

    generations: Any = None  # the loaded-model cache, kept between test generations
    preloaded: Any = None  # the base model the next job will likely train (the worker's last one)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            os._exit(0)
        if message[0] == "preload":
            preloaded = None  # the one before goes first: one base model in memory at a time
            preloaded = preload_base_model(models_dir, message[1])
            continue
        if message[0] == "generate":
            from services.trainer.engine.generation import GenerationCache
            from services.trainer.engine.model_store import ModelStore

            if generations is None:
                generations = GenerationCache(ModelStore(models_dir), device=device)
            send(run_generation(message[1], store, generations, send))
            continue
        if message[0] != "job":
            os._exit(0)
        break
    if generations is not None:
        # The training gets the device to itself: the test models go first.
        generations.clear()
        generations = None
        if device == "cuda":
            torch.cuda.empty_cache()
    spec = message[1]
    if preloaded is not None and json.loads(spec["config_json"]).get("base_model") != preloaded[0]:
        preloaded = None  # another base model: this one's memory is the run's

    controls = JobControls()
    threading.Thread(target=_listen, args=(conn, controls), daemon=True, name="worker-pipe").start()
    outcome, text = run_job(spec, store, models_dir, send, controls, preloaded[1] if preloaded else None)
    send(("done", outcome, text))
    conn.close()


class JobControls:
    """What the job's users asked for, as the training loop polls it."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._pending: list[str] = []

    def add(self, control: str) -> None:
        with self._lock:
            if control not in self._pending:
                self._pending.append(control)

    def take(self) -> list[str]:
        with self._lock:
            taken, self._pending = self._pending, []
        return taken


def _exit_with_parent(parent: int) -> None:
    """A worker killed with -9 can't stop its training process: the process notices it was
    orphaned (its parent changes) and exits."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(3)


def _listen(conn: Connection, controls: JobControls) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            # The worker is gone: nobody may keep training this job under a lease it lost.
            os._exit(3)
        if message[0] == "cancel":
            controls.cancelled.set()
        elif message[0] == "control":
            controls.add(message[1])


def preload_base_model(models_dir: str, base_model: str) -> tuple[str, Any] | None:
    """(name, the base model) loaded ahead of a job that names it; None when it can't be (the job
    will then load it, and say what is wrong)."""
    from services.trainer.engine.base_model import load_base_model
    from services.trainer.engine.model_store import ModelStore

    store = ModelStore(models_dir)
    entry = store.entry(base_model)
    try:
        return (base_model, load_base_model(entry.family, store.resolve(entry.id).path)) if entry is not None else None
    except Exception:
        return None


def run_job(spec: dict[str, Any], store: Any, models_dir: str, send: Send,
            controls: JobControls, preloaded: Any = None) -> tuple[str, str]:
    """Train; returns (outcome, message): SUCCEEDED, CANCELLED, FAILED (can never work) or RETRY."""
    from services.common.object_keys import manifest_key_of
    from services.trainer.engine.config import parse_config
    from services.trainer.engine.errors import BaseModelUnavailable, InvalidTrainingConfig, TrainingCancelled
    from services.trainer.engine.model_store import ModelStore
    from services.trainer.engine.object_store_io import ObjectStoreReader, ObjectStoreWriter
    from services.trainer.engine.snapshot import SnapshotError, load_snapshot
    from services.trainer.engine.trainer import train

    reader = ObjectStoreReader(store)
    epoch_losses: dict[int, list[float]] = {}

    def on_progress(event: Any) -> None:
        if event.phase == "training" and event.loss is not None:
            epoch_losses.setdefault(event.epoch, []).append(event.loss)
        send(("progress", {**dataclasses.asdict(event), "time": time.time()}))

    config = parse_config(spec["config_json"])
    writer = ReportingWriter(ObjectStoreWriter(store, spec["output_prefix"]), send, epoch_losses,
                             config.preview.seed)
    try:
        snapshot = load_snapshot(reader, manifest_key_of(spec["snapshot"]))
        train(config, snapshot, reader, writer, store=ModelStore(models_dir), progress=on_progress,
              should_cancel=controls.cancelled.is_set, controls=controls.take, loaded=preloaded)
    except TrainingCancelled as exc:
        return "CANCELLED", f"cancelled at step {exc.step}"
    except (InvalidTrainingConfig, SnapshotError, BaseModelUnavailable) as exc:
        return "FAILED", str(exc)
    except Exception as exc:
        return "RETRY", f"{type(exc).__name__}: {exc}"
    return "SUCCEEDED", ""


def run_generation(spec: dict[str, Any], store: Any, cache: Any, send: Send) -> tuple[Any, ...]:
    """One test generation: each image written and announced as it is done, then the sheet of a
    grid. Returns the final message, ("generated", sheet) or ("generation_failed", why)."""
    from services.trainer.engine.errors import InvalidGenerationRequest, LoraIncompatible
    from services.trainer.engine.generation import GenerationRequest, comparison_grid, generate
    from services.trainer.engine.previews import png_bytes

    cells = spec["cells"]
    loras = {key: store.get_bytes(key) for key in {c["lora_key"] for c in cells if c["lora_key"]}}
    first = cells[0]
    request = GenerationRequest(
        base_model=spec["base_model"], prompt=first["prompt"], strength=first["strength"],
        lora=loras.get(first["lora_key"]), negative_prompt=spec["negative_prompt"], seed=spec["seed"],
        sampler=spec["sampler"], steps=spec["steps"], cfg_scale=spec["cfg_scale"], width=spec["width"] or None,
        height=spec["height"] or None, count=spec["count"], clip_skip=spec["clip_skip"])
    written = [0]

    def emit(row: int, column: int, index: int, image: Any) -> None:
        key = f"{spec['output_prefix']}images/{written[0]}.png"
        store.put_bytes(key, png_bytes(image), "image/png")
        cell = next(c for c in cells if c["row"] == row and c["column"] == column)
        send(("image", {"number": written[0], "row": row, "column": column, "index": index, "epoch": cell["epoch"],
                        "strength": cell["strength"], "prompt": cell["prompt"],
                        "seed": request.seed + (index if len(cells) == 1 else 0), "key": key}))
        written[0] += 1

    try:
        if len(cells) == 1:
            generate(request, store=cache.store, on_image=lambda i, image: emit(0, 0, i, image), cache=cache)
            return ("generated", None)
        rows = sorted({c["row"]: c for c in cells}.values(), key=lambda c: c["row"])
        row_zero = sorted((c for c in cells if c["row"] == 0), key=lambda c: c["column"])
        by_prompt = len({c["prompt"] for c in row_zero}) > 1
        grid = comparison_grid(
            dataclasses.replace(request, count=1), [(label, loras.get(c["lora_key"])) for label, c in
                                           zip(spec["row_labels"], rows, strict=True)],
            cache.store, strengths=None if by_prompt else [c["strength"] for c in row_zero],
            prompts=[c["prompt"] for c in row_zero] if by_prompt else None, cache=cache,
            on_image=lambda r, c, image: emit(r, c, 0, image))
        key = f"{spec['output_prefix']}sheet.png"
        data = png_bytes(grid.sheet)
        store.put_bytes(key, data, "image/png")
        return ("generated", {"key": key, "size": len(data)})
    except (InvalidGenerationRequest, LoraIncompatible) as exc:
        return ("generation_failed", str(exc))
    except Exception as exc:
        return ("generation_failed", f"{type(exc).__name__}: {exc}")


class ReportingWriter:
    """The run's writer, telling the worker what each save left once it is complete: an epoch
    once its checkpoint is written (the last thing it writes), an on-request save once its LoRA
    or previews are."""

    def __init__(self, inner: Any, send: Send, epoch_losses: dict[int, list[float]], preview_seed: int) -> None:
        self._inner = inner
        self._send = send
        self._losses = epoch_losses
        self._preview_seed = preview_seed
        self._files: dict[tuple[str, int], dict[str, Any]] = {}

    def read(self, key: str) -> bytes | None:
        return self._inner.read(key)

    def list(self, prefix: str) -> list[str]:
        return self._inner.list(prefix)

    def write(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._inner.write(key, data, content_type)
        match = _SAVED.match(key)
        if match is None:
            return
        kind, number, what, index = match.group(1), int(match.group(2)), match.group(3), match.group(4)
        record = self._files.setdefault((kind, number), {"previews": []})
        if what == "lora.safetensors":
            record["lora"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        elif index is not None:
            record["previews"].append({"index": int(index), "size": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest(),
                                       "seed": self._preview_seed + int(index), "thumbnail": thumbnail(data)})
        if kind == "epochs" and what == "checkpoint.pt":
            losses = self._losses.get(number, [])
            self._send(("epoch", {"kind": kind, "number": number, **self._files.pop((kind, number)),
                                  "loss": sum(losses) / len(losses) if losses else 0.0}))
        elif kind == "steps" and what == "previews.json":
            self._send(("previews", {"kind": kind, "number": number, **self._files.pop((kind, number))}))
        elif kind == "steps" and what == "lora.safetensors":
            saved = self._files.pop((kind, number))
            self._send(("epoch", {"kind": kind, "number": number, **saved, "previews": [], "loss": 0.0}))


def thumbnail(png: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        out = io.BytesIO()
        image.convert("RGB").save(out, "WEBP", quality=80)
    return out.getvalue()
