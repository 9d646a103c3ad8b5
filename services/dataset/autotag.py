"""Background tagging and screening of uploaded images.

Every image starts `pending`. Workers (one loop per dataset-service replica)
claim due images in batches, send their object keys to the tagger service,
and write back the tags with their scores and the screening verdict. The
image row is the queue: a claim moves `tagging_due` one lease ahead, so a
replica that dies mid-batch simply lets the claim expire; a failure moves it
by an exponential backoff until the attempts run out; so does an answer the
database won't take, for that image alone. A tagger outage never blocks uploads:
images wait, then catch up.

Captions: an image nobody has captioned by hand takes the tagger's tags. A
caption a person set or edited is never replaced by background tagging; an
explicit re-tag says how to merge (ignore, append, overwrite).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from opentelemetry import trace
from sqlalchemy.engine import Connection, Row

from services.common.transactions import Transactions
from services.common.work_queue import LeasedQueue, QueueLoop, QueueTable, RetryPolicy, first_line
from services.dataset import captions, records, schema

log = logging.getLogger(__name__)

MERGE_AUTO = "auto"  # background default: fill captions nobody edited
MERGE_IGNORE = "ignore"
MERGE_APPEND = "append"
MERGE_OVERWRITE = "overwrite"
# Uploads are tagged with the tagger service's preferred tagger and its default
# options, except the rating tag: it describes the picture, not its content.
UPLOAD_REQUEST: dict[str, Any] = {"tagger": "", "options": {"include_rating": False}, "merge": MERGE_AUTO}


@dataclass(frozen=True)
class AutoTag:
    name: str
    score: float
    category: str  # general | character | rating


@dataclass(frozen=True)
class TagOutcome:
    """The tagger's answer for one image: tags and a verdict, or why it failed."""

    tags: tuple[AutoTag, ...] = ()
    verdict: str = ""  # allow | review | block
    findings: tuple[dict[str, Any], ...] = ()
    tagger: str = ""
    error: str = ""


class TaggerUnavailable(Exception):
    """The tagger could not be reached or failed as a whole; the batch is retried later."""


class TaggingClient(Protocol):
    async def tag(self, object_keys: Sequence[str], tagger: str, options: dict[str, Any]) -> list[TagOutcome]: ...


# Time a round may still need after the tagger answered: writing the results back, which can
# queue behind other writers (a transaction may take up to the database ceiling, 15 s by default).
RECORD_MARGIN = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class TaggingSettings:
    batch_size: int = 8
    # The longest a round waits for the tagger; past it the call counts as a failed attempt.
    call_timeout: dt.timedelta = dt.timedelta(seconds=300)
    max_attempts: int = 5
    first_backoff: dt.timedelta = dt.timedelta(seconds=2)
    # Even without a wake-up, look for due work this often (retries, expired leases, other replicas).
    idle_poll: float = 5.0

    def __post_init__(self) -> None:
        if self.call_timeout <= dt.timedelta(0):
            raise ValueError(f"the tagging call timeout must be positive, not {self.call_timeout}")

    @property
    def lease(self) -> dt.timedelta:
        """How long a claim keeps other replicas off its images. Derived, never set: it must
        outlast the whole round (the tagger call, then the write-back), or a second replica
        tags the same images while the first is still waiting for its answer."""
        return self.call_timeout + RECORD_MARGIN


_images = schema.images.c
TAGGING_QUEUE = QueueTable(schema.images, _images.id, _images.tagging_state, _images.tagging_due,
                           _images.tagging_attempts, _images.tagging_error, _images.tagging_claimed_at)


def merge_caption(current: Sequence[str], suggested: Sequence[str], merge: str, edited: bool) -> list[str] | None:
    """The new caption, or None to leave it as it is."""
    if merge == MERGE_OVERWRITE or (merge == MERGE_AUTO and not edited):
        return list(dict.fromkeys(suggested))
    if merge == MERGE_APPEND:
        return captions.add_tags(current, suggested, at_head=False)
    return None


class TaggingWorker:
    """Tags due images through the tagger service, a batch a round (see the module docstring)."""

    def __init__(self, transactions: Transactions, client: TaggingClient, settings: TaggingSettings,
                 tracer: trace.Tracer | None = None) -> None:
        self._tx = transactions
        self._client = client
        self._settings = settings
        self._tracer = tracer or trace.NoOpTracer()
        self.queue = LeasedQueue("tagging", TAGGING_QUEUE, settings.lease,
                                 RetryPolicy(settings.max_attempts, settings.first_backoff))
        self._loop = QueueLoop(self.run_once, settings.idle_poll, "tagging")
        self._adopted = False

    def wake(self) -> None:
        """New work was committed: look now rather than at the next poll."""
        self._loop.wake()

    async def until_idle(self) -> None:
        """Wait until no image is due (tests and the demo use this instead of sleeping)."""
        await self._loop.until_idle()

    async def run_forever(self) -> None:
        await self._loop.run_forever()

    async def run_once(self) -> bool:
        """Tag one batch of due images; False when there was none."""
        if not self._adopted:
            # In the round, not before the loop: a database that is down at start-up delays it, like
            # any round, instead of ending tagging for good.
            adopted = await self._tx.run(self._adopt_skipped)
            self._adopted = True
            if adopted:
                log.info("queued images uploaded while no tagger was configured",
                         extra={"fields": {"count": adopted}})
        claim: list[Row[Any]] = await self._tx.run(
            lambda conn: self.queue.claim(conn, self._settings.batch_size,
                                          order_by=(schema.images.c.tagging_due, schema.images.c.create_time)))
        if not claim:
            return False
        groups: dict[str, list[Row[Any]]] = {}
        for row in claim:
            groups.setdefault(_group_key(row.tagging_request or UPLOAD_REQUEST), []).append(row)
        with self._tracer.start_as_current_span("tagging round", attributes={"images": len(claim)}):
            # Side by side, not in turn: the lease covers one call timeout, however many groups the claim holds.
            results = await asyncio.gather(*(self._tag_group(rows) for rows in groups.values()),
                                           return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return True

    async def _tag_group(self, rows: Sequence[Row[Any]]) -> None:
        """Ask the tagger about images that share a tagger and options, and write back what it said."""
        request = rows[0].tagging_request or UPLOAD_REQUEST
        timeout = self._settings.call_timeout.total_seconds()
        try:
            outcomes = await asyncio.wait_for(self._client.tag([r.original_key for r in rows],
                                                               request.get("tagger", ""),
                                                               request.get("options") or {}), timeout)
        except TaggerUnavailable as exc:
            reason = str(exc)
        except TimeoutError:
            reason = f"the tagger did not answer within {timeout:g} seconds"
        else:
            if len(outcomes) == len(rows):
                reason = await self._try_record(rows, outcomes)
                if not reason:
                    return
            else:
                reason = f"the tagger answered for {len(outcomes)} images instead of {len(rows)}"
        await self._tx.run(lambda conn: self.queue.fail(conn, rows, reason))

    async def _try_record(self, rows: Sequence[Row[Any]], outcomes: Sequence[TagOutcome]) -> str:
        """Write back the answers; why that failed as a whole, or "" when it didn't."""
        try:
            await self._tx.run(lambda conn: self._record(conn, rows, outcomes))
        except Exception as exc:
            # Counted as a failed attempt like any other, so retries back off and end; left
            # alone, the images would be claimed again at every lease, their attempts never counted.
            log.warning("could not record a batch's tags", exc_info=True,
                        extra={"fields": {"images": [r.id for r in rows]}})
            return f"could not record the tagger's answer: {first_line(exc)}"
        return ""

    def _record(self, conn: Connection, rows: Sequence[Row[Any]], outcomes: Sequence[TagOutcome]) -> None:
        # Every dataset is locked up front, in id order: two replicas recording batches that span
        # the same datasets then queue one behind the other instead of deadlocking.
        for dataset_id in sorted({row.dataset_id for row in rows}):
            records.get_dataset_by_id(conn, dataset_id, lock=True)
        answers = {row.id: outcome for row, outcome in zip(rows, outcomes, strict=True)}
        self.queue.record_each(conn, rows, lambda conn_, row: self._record_one(conn_, row, answers[row.id]),
                               what="the tagger's answer")

    def _record_one(self, conn: Connection, row: Row[Any], outcome: TagOutcome) -> str:
        problem = outcome.error or _outcome_problem(outcome)
        if problem:
            return problem
        current = conn.execute(sa.select(schema.images).where(schema.images.c.id == row.id)).first()
        if current is None or not self.queue.held(current, row):
            return ""  # deleted, finished elsewhere, or our lease ran out and another round took it
        if current.tagging_request != row.tagging_request:
            return ""  # a newer re-tag request arrived meanwhile; its own round answers it
        request = row.tagging_request or UPLOAD_REQUEST
        # A tag our captions can't hold (a comma inside, say) is kept as a suggestion only.
        suggested = [t for t in (captions.clean_tag(tag.name) for tag in outcome.tags)
                     if captions.tag_problem(t) is None]
        values: dict[str, Any] = {column.name: value for column, value in self.queue.finished().items()}
        values.update({
            "tagging_state": "done", "tagger": outcome.tagger,
            "auto_tags": [{"tag": t.name, "score": round(t.score, 4), "category": t.category}
                          for t in outcome.tags],
            "screening_verdict": outcome.verdict or None,
            "screening_findings": list(outcome.findings),
        })
        caption = merge_caption(list(current.tags), suggested, request.get("merge", MERGE_AUTO),
                                bool(current.caption_edited))
        if caption is not None:
            values["tags"] = fit_caption(caption)
        records.update_image(conn, row.id, **values)
        return ""

    def _adopt_skipped(self, conn: Connection) -> int:
        """Images uploaded while no tagger was configured join the queue as if just uploaded: once
        screening is on, nothing should reach a snapshot unscreened."""
        return self.queue.requeue(conn, schema.images.c.tagging_state == "skipped")


def fit_caption(tags: Sequence[str]) -> list[str]:
    """The longest head of `tags` that a caption may hold, by the limits a person's edit is held to
    (captions.validate_tags). The head, because tags come best first, and an appended caption
    starts with the person's own tags, which already fit."""
    kept: list[str] = []
    length = 0
    for tag in tags[:captions.MAX_TAGS]:
        length += len(tag) + (len(", ") if kept else 0)
        if length > captions.MAX_CAPTION_LENGTH:
            break
        kept.append(tag)
    return kept


def _outcome_problem(outcome: TagOutcome) -> str:
    if len(outcome.tagger) > schema.TAGGER_NAME_LENGTH:
        return (f"the tagger's name is {len(outcome.tagger)} characters long; "
                f"at most {schema.TAGGER_NAME_LENGTH} can be recorded")
    return ""


def _group_key(request: dict[str, Any]) -> str:
    return json.dumps({"t": request.get("tagger", ""), "o": request.get("options") or {}}, sort_keys=True)
