"""Captions: tag edits on one image or many, re-tagging, statistics."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.engine import Connection

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import tagging_types_pb2 as ttpb
from services.common.call_context import current_tenant
from services.common.errors import (
    FieldViolation,
    ServiceError,
    failed_precondition,
    invalid,
    invalid_field,
    unary_errors,
)
from services.dataset import captions, names, records, schema
from services.dataset.convert import (
    MERGE_TO_DB,
)
from services.dataset.requests import (
    child_ids,
    optional_role,
    require_all,
)
from services.dataset.service_base import ServicerBase
from services.dataset.tagger_client import options_to_dict


class CaptionRpcs(ServicerBase):
    @unary_errors
    async def AddImageTags(self, request: pb.AddImageTagsRequest, context: grpc.aio.ServicerContext) -> pb.Image:
        target = names.parse_image(request.name)
        new = captions.validate_tags(request.tags, "tags")
        if not new:
            raise invalid_field("tags", "give at least one tag")
        at_head = request.position == pb.TAG_POSITION_HEAD
        return await self._edit_tags(context, "AddImageTags", request, target,
                                     lambda tags: captions.add_tags(tags, new, at_head))

    @unary_errors
    async def RemoveImageTags(self, request: pb.RemoveImageTagsRequest,
                              context: grpc.aio.ServicerContext) -> pb.Image:
        target = names.parse_image(request.name)
        unwanted = captions.validate_tags(request.tags, "tags", allow_duplicates=True)
        return await self._edit_tags(context, "RemoveImageTags", request, target,
                                     lambda tags: captions.remove_tags(tags, unwanted))

    async def _edit_tags(self, context: grpc.aio.ServicerContext, method: str, request: Message,
                         target: names.ImageName, edit: Callable[[list[str]], list[str]]) -> pb.Image:
        def work(conn: Connection, tenant: str) -> pb.Image:
            records.get_dataset(conn, tenant, target.dataset_id, lock=True)
            row = records.get_image(conn, tenant, target.dataset_id, target.image_id)
            tags = edit(list(row.tags))
            captions.check_caption_size(tags, "tags")
            if tags != list(row.tags):
                records.update_image(conn, row.id, tags=tags, caption_edited=True)
            return self._image_message(conn, tenant, target.dataset_id, target.image_id)

        return await self._tx.idempotent(method, request, pb.Image, work)

    @unary_errors
    async def BatchEditTags(self, request: pb.BatchEditTagsRequest,
                            context: grpc.aio.ServicerContext) -> pb.BatchEditTagsResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        image_ids = child_ids(request.names, dataset_id, required=False)
        edit = _batch_edit(request)

        def work(conn: Connection, tenant: str) -> pb.BatchEditTagsResponse:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            rows = records.images_of(conn, dataset_id, image_ids or None)
            if image_ids:
                require_all(rows, image_ids, dataset_id)
            changed = 0
            for row in rows:
                tags = edit(list(row.tags))
                if tags != list(row.tags):
                    captions.check_caption_size(tags, f"image {row.id}")
                    records.update_image(conn, row.id, tags=tags, caption_edited=True)
                    changed += 1
            if changed:
                records.touch_dataset(conn, dataset_id)
            return pb.BatchEditTagsResponse(changed_count=changed)

        return await self._tx.idempotent("BatchEditTags", request, pb.BatchEditTagsResponse, work)

    @unary_errors
    async def RetagImages(self, request: pb.RetagImagesRequest,
                          context: grpc.aio.ServicerContext) -> pb.RetagImagesResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        image_ids = child_ids(request.names, dataset_id, required=False)
        merge = MERGE_TO_DB.get(request.merge)
        if merge is None:
            raise invalid_field("merge", "say how new tags meet the caption: IGNORE, APPEND or OVERWRITE")
        if request.tagger:
            names.check_tagger(request.tagger)
        _check_tagging_options(request.options)
        if self.tagging is None:
            raise failed_precondition("this dataset service has no tagger configured (KILN_TAGGER_ADDRESS)",
                                      "TAGGING_DISABLED")
        tagging_request = {"tagger": request.tagger, "options": options_to_dict(request.options), "merge": merge}

        def work(conn: Connection, tenant: str) -> pb.RetagImagesResponse:
            records.get_dataset(conn, tenant, dataset_id, lock=True)
            rows = records.images_of(conn, dataset_id, image_ids or None)
            if image_ids:
                require_all(rows, image_ids, dataset_id)
            if rows:
                conn.execute(schema.images.update().where(schema.images.c.id.in_([r.id for r in rows])).values(
                    tagging_state="pending", tagging_due=records.now(), tagging_attempts=0, tagging_error=None,
                    tagging_request=tagging_request, update_time=records.now()))
            return pb.RetagImagesResponse(queued_count=len(rows))

        response = await self._tx.idempotent("RetagImages", request, pb.RetagImagesResponse, work)
        self.tagging.wake()
        return response

    @unary_errors
    async def GetTagStatistics(self, request: pb.GetTagStatisticsRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetTagStatisticsResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        tenant = current_tenant()
        role = optional_role(request.role, "role")

        def read(conn: Connection) -> pb.GetTagStatisticsResponse:
            records.get_dataset(conn, tenant, dataset_id)
            i = schema.images.c
            query = sa.select(i.tags).where(i.dataset_id == dataset_id, *([i.role == role] if role else []))
            all_tags = [list(t) for t in conn.execute(query).scalars()]
            return pb.GetTagStatisticsResponse(
                tags=[pb.TagCount(tag=t, count=c) for t, c in captions.tag_frequencies(all_tags)],
                image_count=len(all_tags),
            )

        return await self._tx.run(read, read_only=True)


def _check_tagging_options(options: ttpb.TaggingOptions) -> None:
    """The options are copied into every image queued, so they are held to what a caption may hold;
    anything the tagger service would refuse fails here rather than on every image later."""
    violations = [
        FieldViolation(f"options.{name}", "between 0 and 1; leave it unset for the tagger's default", "OUT_OF_RANGE")
        for name in ("general_threshold", "character_threshold")
        if options.HasField(name) and not 0.0 <= getattr(options, name) <= 1.0  # NaN fails this too
    ]
    if options.max_tags < 0:
        violations.append(FieldViolation("options.max_tags", "must not be negative (0: no limit)", "OUT_OF_RANGE"))
    try:
        captions.validate_tags(options.undesired_tags, "options.undesired_tags", allow_duplicates=True, what="list")
    except ServiceError as err:
        violations.extend(err.violations)
    if violations:
        raise invalid(violations)


def _batch_edit(request: pb.BatchEditTagsRequest) -> Callable[[list[str]], list[str]]:
    kind = request.WhichOneof("edit")
    if kind == "add":
        (tag,) = captions.validate_tags([request.add.tag], "add.tag")
        at_head = request.add.position == pb.TAG_POSITION_HEAD
        return lambda tags: captions.add_tags(tags, [tag], at_head)
    if kind == "remove":
        (tag,) = captions.validate_tags([request.remove.tag], "remove.tag")
        return lambda tags: captions.remove_tags(tags, [tag])
    if kind == "replace":
        (old,) = captions.validate_tags([request.replace.tag], "replace.tag")
        (new,) = captions.validate_tags([request.replace.replacement], "replace.replacement")
        return lambda tags: captions.replace_tag(tags, old, new)
    raise invalid_field("edit", "set one of add, remove or replace")
