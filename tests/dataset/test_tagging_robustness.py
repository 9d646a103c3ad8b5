"""Background tagging against answers that are hard to record, slow taggers and several replicas.

A test-owned worker with a scripted tagger drives a real dataset service's database (SQLite
and PostgreSQL), so each round is run by hand and nothing waits on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import pathlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common.internal_client import internal_channel
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings
from services.common.transactions import Transactions
from services.dataset import captions, records, schema
from services.dataset.autotag import RECORD_MARGIN, AutoTag, TaggingSettings, TaggingWorker, TagOutcome, fit_caption
from services.dataset.server import running_dataset_service, tagging_settings
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import image_bytes, new_dataset, upload
from tests.servers import TEST_AUTH

LONGEST_TAGGER = "taggers/" + "a" * 63  # the registry allows 63-character ids


@dataclass
class Database:
    """The service's database, and the transactions the service itself runs on."""

    transactions: Transactions
    stub: dataset_pb2_grpc.DatasetServiceStub

    @property
    def engine(self) -> Engine:
        return self.transactions.engine

    def worker(self, client: Any, **settings: Any) -> TaggingWorker:
        return TaggingWorker(self.transactions, client, TaggingSettings(**settings))

    def queue(self, count: int, dataset: pb.Dataset | None = None) -> list[pb.Image]:
        """Upload `count` images (left untagged: this service has no tagger) and make them due."""
        dataset = dataset or new_dataset(self.stub)
        images = [upload(self.stub, dataset.name, image_bytes(seed=_seed())) for _ in range(count)]
        with self.engine.begin() as conn:
            for image in images:
                conn.execute(schema.images.update().where(schema.images.c.id == _id(image))
                             .values(tagging_state="pending", tagging_due=records.now()))
        return images

    def due(self, image: pb.Image) -> dt.datetime:
        with self.engine.connect() as conn:
            due = conn.execute(sa.select(schema.images.c.tagging_due).where(schema.images.c.id == _id(image))).scalar()
        return due if due.tzinfo else due.replace(tzinfo=dt.UTC)  # SQLite keeps no zone; we write UTC

    def get(self, image: pb.Image) -> pb.Image:
        return self.stub.GetImage(pb.GetImageRequest(name=image.name))


_seeds = iter(range(70_000, 80_000))


def _seed() -> int:
    return next(_seeds)


def _id(image: pb.Image) -> str:
    return image.name.rsplit("/", 1)[1]


@contextlib.contextmanager
def _database(dialect: str, request: pytest.FixtureRequest, aio: LoopThread, store: ObjectStore,
              s3_settings: ObjectStoreSettings, tmp_path: pathlib.Path) -> Iterator[Database]:
    overrides = {}
    if dialect == "postgresql":
        postgres = request.getfixturevalue("postgres")
        overrides["dataset_database_url"] = postgres.create_database(f"tagrob_{uuid.uuid4().hex[:8]}")
    settings = make_settings(tmp_path, s3_settings, **overrides)
    with aio.context(running_dataset_service(settings, store)) as service, \
            internal_channel(service.address, TEST_AUTH) as channel:
        # The test's worker runs on the service's own transactions: one wiring, the service's.
        yield Database(service.components.transactions, dataset_pb2_grpc.DatasetServiceStub(channel))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, aio, store, s3_settings, tmp_path) -> Iterator[Database]:
    with _database(request.param, request, aio, store, s3_settings, tmp_path) as database:
        yield database


@pytest.fixture
def pg(request, aio, store, s3_settings, tmp_path) -> Iterator[Database]:
    """For what only PostgreSQL does: refuse NUL and NaN, and lock rows."""
    with _database("postgresql", request, aio, store, s3_settings, tmp_path) as database:
        yield database


class Scripted:
    """A tagger whose answer for each image comes from a function of its object key."""

    def __init__(self, answer: Callable[[str], TagOutcome]) -> None:
        self._answer = answer

    async def tag(self, object_keys: Sequence[str], tagger: str, options: dict[str, Any]) -> list[TagOutcome]:
        return [self._answer(key) for key in object_keys]


def answer(tagger: str = "taggers/builtin", tags: Sequence[str] = ("outdoors",), score: float = 0.9) -> TagOutcome:
    return TagOutcome(tags=tuple(AutoTag(t, score, "general") for t in tags), verdict="allow", tagger=tagger)


def test_the_longest_tagger_names_are_recorded(aio, db):
    image, = db.queue(1)
    assert aio.run(db.worker(Scripted(lambda _: answer(LONGEST_TAGGER))).run_once())
    tagged = db.get(image)
    assert tagged.auto_tagging.state == pb.TAGGING_STATE_DONE
    assert tagged.auto_tagging.tagger == LONGEST_TAGGER


def test_a_tagger_name_too_long_to_record_is_a_failed_attempt(aio, db):
    image, = db.queue(1)
    aio.run(db.worker(Scripted(lambda _: answer("taggers/" + "b" * 200))).run_once())
    failed = db.get(image)
    assert failed.auto_tagging.state == pb.TAGGING_STATE_PENDING and failed.auto_tagging.attempts == 1
    assert failed.auto_tagging.error == ("the tagger's name is 208 characters long; "
                                         f"at most {schema.TAGGER_NAME_LENGTH} can be recorded")


# What PostgreSQL refuses to store: NUL in a varchar (refused by the driver), and a NaN score
# in a json column (refused by the server, which aborts the transaction it happens in).
POISONS = {"nul": lambda: answer("taggers/bad\x00name"), "nan": lambda: answer(score=float("nan"))}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_an_answer_the_database_refuses_fails_that_image_alone(aio, pg, poison):
    first, bad, last = pg.queue(3)
    worker = pg.worker(Scripted(lambda key: POISONS[poison]() if _id(bad) in key else answer()),
                       max_attempts=2, first_backoff=dt.timedelta(minutes=5))
    claimed_at = records.now()
    assert aio.run(worker.run_once())

    for image in (first, last):
        assert pg.get(image).auto_tagging.state == pb.TAGGING_STATE_DONE
    failed = pg.get(bad)
    assert failed.auto_tagging.state == pb.TAGGING_STATE_PENDING and failed.auto_tagging.attempts == 1
    assert failed.auto_tagging.error.startswith("could not record the tagger's answer: ")
    # Retried after the backoff, like any failure, not re-claimed at every lease with no attempt counted.
    due = pg.due(bad)
    assert claimed_at + dt.timedelta(minutes=4) < due < claimed_at + dt.timedelta(minutes=6)

    with pg.engine.begin() as conn:
        conn.execute(schema.images.update().where(schema.images.c.id == _id(bad)).values(tagging_due=records.now()))
    assert aio.run(worker.run_once())
    failed = pg.get(bad)
    assert failed.auto_tagging.state == pb.TAGGING_STATE_FAILED and failed.auto_tagging.attempts == 2
    assert not aio.run(worker.run_once())  # the queue is empty, not jammed


def test_a_batch_that_cannot_be_recorded_at_all_counts_a_failed_attempt(aio, pg):
    images = pg.queue(2)
    dataset_id = images[0].name.split("/")[1]
    with pg.engine.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{pg.engine.url.database}" SET lock_timeout = 300'))
        conn.commit()
    pg.engine.dispose()  # new sessions give up on a lock after 300 ms
    worker = pg.worker(Scripted(lambda _: answer()), first_backoff=dt.timedelta(minutes=5))
    claimed_at = records.now()
    with pg.engine.connect() as writer:  # holds the dataset past the worker's patience
        writer.execute(sa.select(schema.datasets).where(schema.datasets.c.id == dataset_id).with_for_update())
        assert aio.run(worker.run_once())
        writer.rollback()
    for image in images:
        failed = pg.get(image)
        assert failed.auto_tagging.state == pb.TAGGING_STATE_PENDING and failed.auto_tagging.attempts == 1
        assert failed.auto_tagging.error.startswith("could not record the tagger's answer: OperationalError: ")
        assert "lock timeout" in failed.auto_tagging.error
        assert pg.due(image) > claimed_at + dt.timedelta(minutes=4)


def test_tagger_captions_fit_the_caption_length(aio, db):
    image, = db.queue(1)
    # 150 tags (under the 200-tag limit) of 60 characters: far over the caption length.
    suggested = [f"tag number {n:03d} " + "x" * 45 for n in range(150)]
    aio.run(db.worker(Scripted(lambda _: answer(tags=suggested))).run_once())
    tagged = db.get(image)
    assert tagged.auto_tagging.state == pb.TAGGING_STATE_DONE
    assert len(tagged.auto_tagging.tags) == 150  # the suggestions are all kept
    caption = list(tagged.tags)
    assert caption == suggested[:len(caption)]
    assert len(", ".join(caption)) <= captions.MAX_CAPTION_LENGTH < len(", ".join(suggested[:len(caption) + 1]))
    captions.check_caption_size(caption, "tags")  # what a person's edit is held to


def test_fit_caption_keeps_the_longest_head_within_both_limits():
    exact = ["x" * 98] * 40  # 40 * 98 + 39 * 2 = 3998 characters
    assert fit_caption(exact) == exact
    assert fit_caption([*exact, "yy"]) == exact  # 4002 would be too long
    assert fit_caption([*exact[:-1], "x" * 99, "z"]) == [*exact[:-1], "x" * 99]  # exactly 4000
    assert fit_caption([f"t{n}" for n in range(300)]) == [f"t{n}" for n in range(captions.MAX_TAGS)]


def test_datasets_are_locked_in_id_order(aio, pg):
    # SQLite serialises writers at BEGIN IMMEDIATE; on PostgreSQL, two replicas locking the
    # same datasets in different orders deadlock.
    low, high = sorted((new_dataset(pg.stub) for _ in range(2)), key=lambda d: d.name)
    # Claimed in upload order: the higher id first, which is what used to be locked first.
    pg.queue(1, high)
    pg.queue(1, low)
    locked: list[str] = []

    def watch(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM datasets" in statement and "FOR UPDATE" in statement:
            locked.extend(parameters.values())

    sa.event.listen(pg.engine, "before_cursor_execute", watch)
    try:
        assert aio.run(pg.worker(Scripted(lambda _: answer())).run_once())
    finally:
        sa.event.remove(pg.engine, "before_cursor_execute", watch)
    assert locked == [low.name.split("/")[1], high.name.split("/")[1]]


class Hung:
    """A tagger that never answers (in this test's lifetime)."""

    async def tag(self, object_keys: Sequence[str], tagger: str, options: dict[str, Any]) -> list[TagOutcome]:
        await asyncio.sleep(60)
        raise AssertionError("the worker waited for the tagger past its call timeout")


def test_a_hung_tagger_is_a_failed_attempt_before_the_claim_expires(aio, db):
    image, = db.queue(1)
    call_timeout = dt.timedelta(seconds=0.5)
    claimed_at = records.now()
    assert aio.run(db.worker(Hung(), call_timeout=call_timeout, first_backoff=dt.timedelta(minutes=5)).run_once())
    failed = db.get(image)
    assert failed.auto_tagging.state == pb.TAGGING_STATE_PENDING and failed.auto_tagging.attempts == 1
    assert failed.auto_tagging.error == "the tagger did not answer within 0.5 seconds"
    # The round ended inside its claim, and the failure, not the lease, set the next try.
    assert records.now() < claimed_at + TaggingSettings(call_timeout=call_timeout).lease
    assert db.due(image) > claimed_at + dt.timedelta(minutes=4)


class Rendezvous:
    """A tagger that answers only once `expected` calls are waiting at the same time."""

    def __init__(self, expected: int) -> None:
        self._expected = expected
        self._waiting = 0
        self._all_here = asyncio.Event()

    async def tag(self, object_keys: Sequence[str], tagger: str, options: dict[str, Any]) -> list[TagOutcome]:
        self._waiting += 1
        if self._waiting == self._expected:
            self._all_here.set()
        # Bounded, so that calls made in turn fail this test rather than hang it.
        await asyncio.wait_for(self._all_here.wait(), 10)
        return [answer() for _ in object_keys]


def test_groups_of_one_claim_are_tagged_side_by_side(aio, db):
    # Different options make separate tagger calls. In turn, the claim's lease would have to
    # cover one call timeout per group; side by side it covers one.
    images = db.queue(3)
    with db.engine.begin() as conn:
        for n, image in enumerate(images):
            conn.execute(schema.images.update().where(schema.images.c.id == _id(image)).values(
                tagging_request={"tagger": "", "options": {"general_threshold": 0.1 * (n + 1)}, "merge": "auto"}))
    worker = db.worker(Rendezvous(3), call_timeout=dt.timedelta(seconds=30))
    assert aio.run(worker.run_once())
    assert all(db.get(image).auto_tagging.state == pb.TAGGING_STATE_DONE for image in images)


@pytest.mark.parametrize("seconds", [0.5, 30, 300, 3600])
def test_a_claim_outlasts_the_tagger_call_and_the_write_back(seconds):
    settings = TaggingSettings(call_timeout=dt.timedelta(seconds=seconds))
    assert settings.lease >= settings.call_timeout + RECORD_MARGIN > settings.call_timeout


def test_the_service_claims_for_longer_than_it_waits_for_the_tagger(tmp_path, s3_settings):
    settings = tagging_settings(make_settings(tmp_path, s3_settings))
    assert settings.lease > settings.call_timeout


def test_call_timeouts_must_be_positive():
    with pytest.raises(ValueError, match="must be positive"):
        TaggingSettings(call_timeout=dt.timedelta(0))
