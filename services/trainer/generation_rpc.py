"""Test the model: generations from saved epochs, run on a worker and streamed back as each image
finishes (the client's side), and the worker's reports of them."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import grpc
import sqlalchemy as sa
from google.rpc import status_pb2
from sqlalchemy.engine import Connection, Row

from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_worker_pb2 as wpb
from services.common.call_context import current_tenant
from services.common.errors import (
    FieldViolation,
    ServiceError,
    already_exists,
    failed_precondition,
    invalid,
    not_found,
    parsed,
    quota_exceeded,
    stream_errors,
    unary_errors,
)
from services.common.idempotency import check_request_id, request_fingerprint
from services.trainer import records, schema
from services.trainer.artifacts import generation_name, generation_prefix, object_key
from services.trainer.engine.config import parse_config
from services.trainer.engine.generation_request import GenerationRequest
from services.trainer.event_hub import QUEUE, woken
from services.trainer.generation_queue import DONE, FAILED, QUEUED
from services.trainer.service_base import TrainerBase

g = schema.generations.c
gi = schema.generated_images.c
MAX_CELLS, MAX_COUNT = 64, 8
_ENGINE_FIELDS = {"prompt": "prompts", "strength": "strengths", "negative_prompt": "negative_prompt", "seed": "seed",
                  "sampler": "sampler", "steps": "steps", "cfg_scale": "cfg_scale", "width": "width",
                  "height": "height", "count": "count"}


def _topic(generation_id: str) -> str:
    return f"generation:{generation_id}"


class GenerationRpcs(TrainerBase):
    @stream_errors
    async def GenerateImages(self, request: pb.GenerateImagesRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateImagesResponse]:
        request = parsed(request)
        check_request_id(request.request_id)
        job_id = records.parse_job(request.training_job, "training_job")
        tenant = current_tenant()
        fingerprint = request_fingerprint(request)
        generation_id = ""
        if request.request_id:
            generation_id = await self._tx.run(
                functools.partial(_existing, tenant=tenant, request_id=request.request_id, fingerprint=fingerprint),
                read_only=True)
        if not generation_id:
            generation_id = await self._start(request, job_id, tenant, fingerprint)
        async for response in self._follow(tenant, generation_id):
            yield response

    async def _start(self, request: pb.GenerateImagesRequest, job_id: str, tenant: str, fingerprint: str) -> str:
        def read(conn: Connection) -> tuple[Row[Any], list[pb.EpochResult]]:
            job = records.get_job(conn, tenant, job_id)
            return job, records.results_of(conn, [job_id])[job_id]

        job, results = await self._tx.run(read, read_only=True)
        assignment = _assignment(request, job, results)
        generation_id = records.new_id()
        assignment.output_prefix = generation_prefix(job_id, generation_id)

        limit = self._settings.max_queued_generations_per_tenant

        def insert(conn: Connection) -> str:
            self._queue.lock(conn)  # one count at a time per queue change, as for trainings
            earlier = _existing(conn, tenant, request.request_id, fingerprint) if request.request_id else ""
            if earlier:
                return earlier
            waiting = conn.execute(sa.select(sa.func.count()).where(g.tenant == tenant, g.state == QUEUED)).scalar_one()
            if waiting >= limit:
                # Generations go before trainings on a free worker: one tenant's pile must not
                # hold up everyone's tests and trainings.
                raise quota_exceeded(
                    f"at most {limit} test generations may wait or run at once per tenant; wait for one to finish",
                    "GENERATIONS_PER_TENANT", subject=f"tenant:{tenant}",
                    description="max_queued_generations_per_tenant", limit=str(limit))
            at = records.now()
            conn.execute(schema.generations.insert().values(
                id=generation_id, tenant=tenant, job_id=job_id, request_key=request.request_id or generation_id,
                fingerprint=fingerprint, assignment=assignment.SerializeToString(), family=job.family, state=QUEUED,
                due=at, create_time=at, update_time=at))
            return generation_id

        started = await self._tx.run(insert)
        self._hub.notify(QUEUE)
        return started

    async def _follow(self, tenant: str, generation_id: str) -> AsyncIterator[pb.GenerateImagesResponse]:
        sent, position = 0, -1
        with self._hub.subscribe(_topic(generation_id)) as wake:
            while True:
                row, images, where = await self._tx.run(
                    functools.partial(self._progress, tenant=tenant, generation_id=generation_id, after=sent),
                    read_only=True)
                if where != position and where > 0:
                    yield pb.GenerateImagesResponse(queued=pb.QueuedEvent(position=where))
                position = where
                for image in images:
                    yield pb.GenerateImagesResponse(image=image)
                    sent += 1
                if row.state == DONE and sent >= row.images:
                    if row.sheet:
                        yield pb.GenerateImagesResponse(sheet=pb.Artifact.FromString(row.sheet))
                    return
                if row.state == FAILED:
                    error = status_pb2.Status.FromString(row.error_status) if row.error_status else None
                    raise ServiceError(grpc.StatusCode.ABORTED, error.message if error else "the generation failed",
                                       "GENERATION_FAILED")
                if not images:
                    await woken(wake, self._settings.watch_poll_seconds)

    def _progress(self, conn: Connection, tenant: str, generation_id: str,
                  after: int) -> tuple[Row[Any], list[pb.GeneratedImage], int]:
        row = conn.execute(sa.select(schema.generations).where(g.id == generation_id, g.tenant == tenant)).first()
        if row is None:  # its job was deleted meanwhile
            raise not_found(generation_id, "generation")
        images = [pb.GeneratedImage.FromString(r.body) for r in conn.execute(
            sa.select(gi.body).where(gi.generation_id == generation_id, gi.seq > after).order_by(gi.seq))]
        return row, images, self._deps.generations.position(conn, row)

    # ----- the workers' side -----

    @unary_errors
    async def ReportGeneratedImages(self, request: wpb.ReportGeneratedImagesRequest,
                                    context: grpc.aio.ServicerContext) -> wpb.ReportGeneratedImagesResponse:
        request = parsed(request)
        generation_id = _parse_generation(request.generation)

        def work(conn: Connection) -> None:
            row = self._deps.generations.leased_row(conn, generation_id, request.lease_id)
            if row is None:
                raise failed_precondition("the lease on this generation is no longer this worker's", "LEASE_LOST")
            _record_images(conn, row, request.images)
            self._deps.generations.renew(conn, generation_id)

        await self._tx.run(work)
        self._hub.notify(_topic(generation_id))
        return wpb.ReportGeneratedImagesResponse()

    @unary_errors
    async def FinishGeneration(self, request: wpb.FinishGenerationRequest,
                               context: grpc.aio.ServicerContext) -> wpb.FinishGenerationResponse:
        request = parsed(request)
        generation_id = _parse_generation(request.generation)

        def work(conn: Connection) -> None:
            row = self._deps.generations.leased_row(conn, generation_id, request.lease_id)
            if row is None:
                raise failed_precondition("the lease on this generation is no longer this worker's", "LEASE_LOST")
            _record_images(conn, row, request.images)
            values: dict[str, Any] = {**self._deps.generations.leased.finished(), "lease_id": None,
                                      "update_time": records.now()}
            if request.HasField("error"):
                values.update(state=FAILED, error=request.error.message, error_status=request.error.SerializeToString())
            else:
                values["state"] = DONE
                if request.HasField("sheet"):
                    values["sheet"] = request.sheet.SerializeToString()
            conn.execute(schema.generations.update().where(g.id == generation_id).values(values))

        await self._tx.run(work)
        self._hub.notify(_topic(generation_id))
        self._hub.notify(QUEUE)
        return wpb.FinishGenerationResponse()


def _existing(conn: Connection, tenant: str, request_id: str, fingerprint: str) -> str:
    row = conn.execute(sa.select(g.id, g.fingerprint).where(g.tenant == tenant, g.request_key == request_id)).first()
    if row is None:
        return ""
    if row.fingerprint != fingerprint:
        raise already_exists("this request_id was used for another generation", "REQUEST_ID_REUSED",
                             [FieldViolation("request_id", "used before with a different request")])
    return str(row.id)


def _record_images(conn: Connection, row: Row[Any], images: list[pb.GeneratedImage] | Any) -> None:
    # Images are numbered in the order the worker reports them: a resent report repeats some.
    numbers = [_image_number(image.image.name) for image in images]
    fresh = [image for image, number in zip(images, numbers, strict=True) if number >= row.images]
    if [n for n in numbers if n >= row.images] != list(range(row.images, row.images + len(fresh))):
        raise invalid([FieldViolation("images", f"numbered on from {row.images}, in order, without gaps")])
    if not fresh:
        return
    conn.execute(schema.generated_images.insert(), [
        {"generation_id": row.id, "seq": row.images + offset + 1, "body": image.SerializeToString()}
        for offset, image in enumerate(fresh)])
    conn.execute(schema.generations.update().where(g.id == row.id).values(images=g.images + len(fresh)))


def _image_number(name: str) -> int:
    tail = name.rsplit("/images/", 1)
    if len(tail) != 2 or not tail[1].isdigit():
        raise invalid([FieldViolation("images", "each image named {generation}/images/{n}")])
    return int(tail[1])


def _parse_generation(name: str) -> str:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "trainingJobs" or parts[2] != "generations":
        raise invalid([FieldViolation("generation", "trainingJobs/{job}/generations/{id}")])
    return parts[3]


def _assignment(request: pb.GenerateImagesRequest, job: Row[Any],
                results: list[pb.EpochResult]) -> wpb.GenerationAssignment:
    """The request checked against the job, every default filled in from the job's configuration."""
    config = parse_config(job.config)
    saved = sorted({r.epoch for r in results if not r.on_request})
    epochs = list(request.epochs) or saved[-1:]
    if not epochs:
        raise failed_precondition("the job has saved no epoch yet; generate once one is saved", "NO_SAVED_EPOCH")
    for epoch in epochs:
        if epoch != 0 and epoch not in saved:
            raise not_found(f"{records.job_name(job.id)}/epochs/{epoch}", "saved epoch")
    strengths = list(request.strengths) or [1.0]
    prompts = list(request.prompts) or [config.preview.prompt]
    violations: list[FieldViolation] = []
    if len(strengths) > 1 and len(prompts) > 1:
        violations.append(FieldViolation("prompts", "columns are strengths or prompts: give several of one only"))
    if not prompts[0]:
        violations.append(FieldViolation("prompts", "the job has no preview prompt: give one"))
    columns = [(f"strength {s:g}", s, prompts[0]) for s in strengths] if len(prompts) == 1 else \
        [(p, strengths[0], p) for p in prompts]
    count = request.count or 1
    grid = len(epochs) > 1 or len(columns) > 1
    if len(epochs) * len(columns) > MAX_CELLS:
        violations.append(FieldViolation("epochs", f"at most {MAX_CELLS} cells (epochs x columns)"))
    if grid and count > 1:
        violations.append(FieldViolation("count", "a grid has one image per cell: leave count at 1"))
    preview = config.preview
    engine = GenerationRequest(
        base_model=job.base_model, prompt=prompts[0], strength=strengths[0],
        negative_prompt=request.negative_prompt or preview.negative_prompt,
        seed=request.seed if request.HasField("seed") else preview.seed, sampler=request.sampler or preview.sampler,
        steps=request.steps or preview.steps, cfg_scale=request.cfg_scale or preview.cfg_scale,
        width=request.width or None, height=request.height or None, count=count, clip_skip=config.clip_skip)
    for problem in engine.problems():
        violations.append(FieldViolation(_ENGINE_FIELDS.get(problem.field, problem.field), problem.message))
    if count > MAX_COUNT:
        violations.append(FieldViolation("count", f"1..{MAX_COUNT}"))
    for index, strength in enumerate(strengths):
        if not -2.0 <= strength <= 2.0:
            violations.append(FieldViolation(f"strengths[{index}]", "-2..2"))
    if violations:
        raise invalid(violations)
    width, height = config.resolution if isinstance(config.resolution, tuple | list) else \
        (config.resolution, config.resolution) if config.resolution else (0, 0)
    assignment = wpb.GenerationAssignment(
        base_model=job.base_model, negative_prompt=engine.negative_prompt, seed=engine.seed, sampler=engine.sampler,
        steps=engine.steps, cfg_scale=engine.cfg_scale, width=request.width or width, height=request.height or height,
        count=count, clip_skip=config.clip_skip,
        row_labels=[f"epoch {e}" if e else "base model" for e in epochs] if grid else [],
        column_labels=[label for label, _, _ in columns] if grid else [])
    for row, epoch in enumerate(epochs):
        for column, (_, strength, prompt) in enumerate(columns):
            assignment.cells.add(row=row, column=column, epoch=epoch, strength=strength, prompt=prompt,
                                 lora_key=object_key(job.id, "epochs", epoch, None) if epoch else "")
    return assignment


def generation_assignment(row: Row[Any], lease_id: str, lease_seconds: float) -> wpb.GenerationAssignment:
    assignment = wpb.GenerationAssignment.FromString(row.assignment)
    assignment.generation = generation_name(row.job_id, row.id)
    assignment.lease_id = lease_id
    assignment.lease_seconds = lease_seconds
    return assignment
