"""The dataset service's side of the tagger service: object keys in, tags and verdicts out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from kiln.v1 import tagger_pb2 as tpb
from kiln.v1 import tagger_pb2_grpc
from kiln.v1 import tagging_types_pb2 as ttpb
from services.dataset.autotag import AutoTag, TaggerUnavailable, TaggingSettings, TagOutcome

MAX_IMAGES_PER_CALL = 32
CATEGORY_NAMES = {
    ttpb.TAG_CATEGORY_GENERAL: "general", ttpb.TAG_CATEGORY_CHARACTER: "character", ttpb.TAG_CATEGORY_RATING: "rating",
}
DECISION_NAMES = {
    ttpb.MODERATION_DECISION_ALLOW: "allow", ttpb.MODERATION_DECISION_REVIEW: "review",
    ttpb.MODERATION_DECISION_BLOCK: "block",
}
SOURCE_NAMES = {
    ttpb.MODERATION_SIGNAL_SOURCE_DETECTOR: "detector", ttpb.MODERATION_SIGNAL_SOURCE_RATING: "rating",
    ttpb.MODERATION_SIGNAL_SOURCE_TAG: "tag",
}
# Failures of the call as a whole that are worth retrying later.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}


class GrpcTaggingClient:
    # The worker stops waiting after its call timeout (and its claims last longer than that); a
    # client that waited longer would only tag images the worker has given up on.
    def __init__(self, channel: grpc.aio.Channel,
                 timeout: float = TaggingSettings.call_timeout.total_seconds()) -> None:
        self._channel = channel
        self._stub = tagger_pb2_grpc.TaggerServiceStub(self._channel)
        self._timeout = timeout

    async def close(self) -> None:
        await self._channel.close()

    async def tag(self, object_keys: Sequence[str], tagger: str, options: dict[str, Any]) -> list[TagOutcome]:
        outcomes: list[TagOutcome] = []
        for start in range(0, len(object_keys), MAX_IMAGES_PER_CALL):
            outcomes += await self._tag_batch(object_keys[start:start + MAX_IMAGES_PER_CALL], tagger, options)
        return outcomes

    async def _tag_batch(self, keys: Sequence[str], tagger: str, options: dict[str, Any]) -> list[TagOutcome]:
        request = tpb.TagImagesRequest(tagger=tagger, images=[tpb.ImageSource(object_key=k) for k in keys],
                                       options=json_format.ParseDict(options, ttpb.TaggingOptions()))
        try:
            response = await self._stub.TagImages(request, timeout=self._timeout, wait_for_ready=False)
        except grpc.aio.AioRpcError as err:
            if err.code() in RETRYABLE:
                raise TaggerUnavailable(f"tagger service: {err.code().name}: {err.details()}") from err
            # The request itself was refused (unknown tagger, bad options): every image fails the same way.
            return [TagOutcome(error=f"{err.code().name}: {err.details()}") for _ in keys]
        by_index = {r.index: r for r in response.results}
        return [_outcome(by_index.get(i), response.tagger) for i in range(len(keys))]


def _outcome(result: tpb.ImageTagging | None, tagger: str) -> TagOutcome:
    if result is None:
        return TagOutcome(error="the tagger returned no result for this image")
    if result.error_reason:
        return TagOutcome(error=f"{result.error_reason}: {result.error_message}")
    verdict = result.verdict if result.HasField("verdict") else None
    return TagOutcome(
        tags=tuple(AutoTag(t.name, t.score, CATEGORY_NAMES.get(t.category, "general")) for t in result.tags),
        verdict=DECISION_NAMES.get(verdict.decision, "") if verdict else "",
        findings=tuple({"source": SOURCE_NAMES.get(f.source, ""), "label": f.label, "score": round(f.score, 4),
                        "decision": DECISION_NAMES.get(f.decision, "")} for f in verdict.findings) if verdict else (),
        tagger=tagger,
    )


def options_to_dict(options: ttpb.TaggingOptions) -> dict[str, Any]:
    return json_format.MessageToDict(options, preserving_proto_field_name=True)


def auto_tags_message(stored: list[dict[str, Any]] | None) -> list[ttpb.Tag]:
    names = {v: k for k, v in CATEGORY_NAMES.items()}
    unknown = ttpb.TAG_CATEGORY_UNSPECIFIED
    return [ttpb.Tag(name=t["tag"], score=t["score"], category=names.get(t["category"], unknown))
            for t in stored or []]


def verdict_message(verdict: str | None, findings: list[dict[str, Any]] | None) -> ttpb.ModerationVerdict | None:
    if not verdict:
        return None
    decisions = {v: k for k, v in DECISION_NAMES.items()}
    sources = {v: k for k, v in SOURCE_NAMES.items()}
    undecided, unknown = ttpb.MODERATION_DECISION_UNSPECIFIED, ttpb.MODERATION_SIGNAL_SOURCE_UNSPECIFIED
    return ttpb.ModerationVerdict(decision=decisions.get(verdict, undecided), findings=[
        ttpb.ModerationFinding(source=sources.get(f["source"], unknown), label=f["label"], score=f["score"],
                               decision=decisions.get(f["decision"], undecided)) for f in findings or []])
