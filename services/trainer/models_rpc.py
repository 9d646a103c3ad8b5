"""Published models: one saved epoch of a job, its LoRA carrying the name, description and trigger
words in its metadata, with showcase images picked from the epoch's previews."""

from __future__ import annotations

import collections
import hashlib
import logging
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from kiln.v1 import trainer_pb2 as pb
from services.common import object_keys
from services.common.call_context import current_tenant
from services.common.errors import (
    FieldViolation,
    already_exists,
    failed_precondition,
    invalid,
    not_found,
    parsed,
    unary_errors,
)
from services.common.idempotency import check_request_id
from services.common.objectstore import ObjectNotFound
from services.common.pagination import page_size
from services.trainer import records, schema
from services.trainer.artifacts import LORA_TYPE, PNG_TYPE, model_artifact_name, model_key, object_key
from services.trainer.configs import BASE_MODEL_PREFIX, FAMILY_TO_PROTO
from services.trainer.engine.captions import split_tags
from services.trainer.engine.errors import InvalidPublishRequest
from services.trainer.engine.publishing import publish_metadata
from services.trainer.engine.snapshot import DatasetSnapshot, SnapshotError
from services.trainer.service_base import TrainerBase
from services.trainer.webhooks import events as webhook_events

log = logging.getLogger(__name__)
m = schema.models.c
Visibility = pb.Model.Visibility
MAX_NAME, MAX_DESCRIPTION, MAX_TRIGGER_WORDS = 200, 5000, 20


class ModelRpcs(TrainerBase):
    @unary_errors
    async def CreateModel(self, request: pb.CreateModelRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        request = parsed(request)
        check_request_id(request.request_id)
        spec = request.model
        tenant = current_tenant()
        job_id = _check_spec(spec)
        if request.request_id:
            earlier = await self._tx.run(lambda conn: self._tx.replay(conn, tenant, "CreateModel", request, pb.Model),
                                         read_only=True)
            if earlier is not None:
                return earlier

        def read(conn: Connection) -> tuple[Row[Any], pb.EpochResult | None, bool]:
            job = records.get_job(conn, tenant, job_id)
            result = next((r for r in records.results_of(conn, [job_id])[job_id]
                           if r.epoch == spec.epoch and not r.on_request), None)
            taken = conn.execute(sa.select(m.id).where(m.tenant == tenant,
                                                       m.display_name == spec.display_name.strip())).first()
            return job, result, taken is not None

        job, result, taken = await self._tx.run(read, read_only=True)
        if result is None:
            raise not_found(f"{records.job_name(job_id)}/epochs/{spec.epoch}", "saved epoch")
        if taken:
            raise _name_taken(spec.display_name.strip())
        showcase = list(spec.showcase_previews) or [i for i in range(len(result.previews))]
        bad = [FieldViolation(f"model.showcase_previews[{i}]", f"the epoch has previews 0..{len(result.previews) - 1}")
               for i, index in enumerate(showcase) if not 0 <= index < len(result.previews)]
        if bad:
            raise invalid(bad)
        try:
            words = list(spec.trigger_words) or await self._head_tags(job.snapshot)
            lora = await self._tx.objects.run(self._store.get_bytes, object_key(job_id, "epochs", spec.epoch, None))
            images = [await self._tx.objects.run(self._store.get_bytes, object_key(job_id, "epochs", spec.epoch, i))
                      for i in showcase]
        except (ObjectNotFound, SnapshotError) as exc:
            raise failed_precondition(f"what this epoch was made of is gone: {exc}; give the trigger words "
                                      "yourself, or publish another epoch", "EPOCH_FILES_GONE") from None
        try:
            published = await self._cpu(lambda: publish_metadata(
                lora, name=spec.display_name.strip(), description=spec.description, trigger_words=words,
                thumbnail=images[0] if images else None))
        except InvalidPublishRequest as exc:
            raise invalid([FieldViolation(_model_field(v.field), v.message) for v in exc.violations]) from None
        model_id = records.new_id()
        written = [model_key(model_id)] + [model_key(model_id, k) for k in range(len(images))]
        try:
            await self._tx.objects.run(self._store.put_bytes, written[0], published, LORA_TYPE)
            for key, data in zip(written[1:], images, strict=True):
                await self._tx.objects.run(self._store.put_bytes, key, data, PNG_TYPE)
        except BaseException:
            await self._tx.delete_quietly(written)
            raise

        visibility = records.VISIBILITY_TO_DB[spec.visibility or Visibility.VISIBILITY_PRIVATE]

        def work(conn: Connection, tenant: str) -> pb.Model:
            name = spec.display_name.strip()
            at = records.now()
            if conn.execute(sa.select(m.id).where(m.tenant == tenant, m.display_name == name)).first():
                raise _name_taken(name)
            conn.execute(schema.models.insert().values(
                id=model_id, tenant=tenant, display_name=name, description=spec.description,
                trigger_words=[w.strip() for w in words], visibility=visibility,
                job_id=job_id, epoch=spec.epoch, base_model=job.base_model, family=job.family,
                size_bytes=len(published), sha256=hashlib.sha256(published).hexdigest(),
                showcase=showcase, create_time=at))
            self._deps.outbox.record(conn, tenant, *webhook_events.published(
                records.MODEL_PREFIX + model_id, records.job_name(job_id), spec.epoch), at)
            return model_message(records.get_model(conn, tenant, model_id))

        response = await self._tx.idempotent("CreateModel", request, pb.Model, work, written=written)
        if response.name != records.MODEL_PREFIX + model_id:
            await self._tx.delete_quietly(written)  # a concurrent retry won: these copies are spare
        return response

    async def _head_tags(self, snapshot_name: str) -> list[str]:
        """The first tag most training captions start with (the trigger word, kept first in training)."""
        manifest = await self._tx.objects.run(self._store.get_bytes, object_keys.manifest_key_of(snapshot_name))
        snapshot = DatasetSnapshot.from_json(manifest)
        heads = collections.Counter(tags[0] for image in snapshot.training_images
                                    if (tags := split_tags(image.caption)))
        return [heads.most_common(1)[0][0]] if heads else []

    @unary_errors
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        model_id = records.parse_model(parsed(request).name)
        tenant = current_tenant()
        return await self._tx.run(lambda conn: model_message(records.get_model(conn, tenant, model_id)),
                                  read_only=True)

    @unary_errors
    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        request = parsed(request)
        tenant = current_tenant()
        size = page_size(request.page_size, 20, 100)
        visible = sa.or_(m.tenant == tenant, m.visibility == "public") if request.include_public else \
            m.tenant == tenant

        def read(conn: Connection) -> pb.ListModelsResponse:
            rows, token = self._page_tokens.keyset_page(
                conn, sa.select(schema.models).where(visible), m.create_time, m.id, request.page_token, size,
                f"models:{tenant}:{request.include_public}")
            return pb.ListModelsResponse(models=[model_message(r) for r in rows], next_page_token=token)

        return await self._tx.run(read, read_only=True)

    @unary_errors
    async def DeleteModel(self, request: pb.DeleteModelRequest,
                          context: grpc.aio.ServicerContext) -> pb.DeleteModelResponse:
        request = parsed(request)
        model_id = records.parse_model(request.name)

        def work(conn: Connection, tenant: str) -> pb.DeleteModelResponse:
            row = records.get_model(conn, tenant, model_id)
            if row.tenant != tenant:
                raise not_found(request.name, "model")  # another tenant's public model: not this one's to delete
            conn.execute(schema.models.delete().where(m.id == model_id))
            return pb.DeleteModelResponse()

        response = await self._tx.idempotent("DeleteModel", request, pb.DeleteModelResponse, work)
        try:
            await self._tx.objects.run(self._store.delete_prefix, object_keys.model_prefix(model_id))
        except Exception:
            log.exception("could not delete a deleted model's files", extra={"fields": {"model": model_id}})
        return response


def _check_spec(spec: pb.Model) -> str:
    violations = []
    name = spec.display_name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        violations.append(FieldViolation("model.display_name", f"1..{MAX_NAME} printable characters"))
    if len(spec.description) > MAX_DESCRIPTION:
        violations.append(FieldViolation("model.description", f"at most {MAX_DESCRIPTION} characters"))
    if len(spec.trigger_words) > MAX_TRIGGER_WORDS:
        violations.append(FieldViolation("model.trigger_words", f"at most {MAX_TRIGGER_WORDS}"))
    if spec.visibility not in records.VISIBILITY_TO_DB and spec.visibility != Visibility.VISIBILITY_UNSPECIFIED:
        violations.append(FieldViolation("model.visibility", "PRIVATE, TENANT or PUBLIC"))
    if spec.epoch < 1:
        violations.append(FieldViolation("model.epoch", "a saved epoch of the job (1 or more)"))
    job_id = ""
    try:
        job_id = records.parse_job(spec.training_job, "model.training_job")
    except Exception as exc:
        violations += getattr(exc, "violations", [])
    if violations:
        raise invalid(violations)
    return job_id


def _name_taken(name: str) -> Exception:
    return already_exists(f"this tenant already has a model named {name!r}", "MODEL_NAME_TAKEN",
                          [FieldViolation("model.display_name", "taken by another model of this tenant")])


def _model_field(engine_field: str) -> str:
    return {"name": "model.display_name", "lora": "model.training_job", "thumbnail": "model.showcase_previews"
            }.get(engine_field.split("[")[0], f"model.{engine_field}")


def model_message(row: Row[Any]) -> pb.Model:
    message = pb.Model(
        name=records.MODEL_PREFIX + row.id, display_name=row.display_name, description=row.description,
        trigger_words=row.trigger_words, visibility=records.VISIBILITY_FROM_DB[row.visibility],  # type: ignore[arg-type]
        training_job=records.job_name(row.job_id), epoch=row.epoch, base_model=BASE_MODEL_PREFIX + row.base_model,
        family=FAMILY_TO_PROTO[row.family],
        file=pb.Artifact(name=model_artifact_name(row.id), content_type=LORA_TYPE, size_bytes=row.size_bytes,
                         sha256=row.sha256),
        showcase=[pb.Artifact(name=model_artifact_name(row.id, k), content_type=PNG_TYPE)
                  for k in range(len(row.showcase))])
    stamp = records.timestamp(row.create_time)
    if stamp is not None:
        message.create_time.CopyFrom(stamp)
    return message
