"""Migration 0003 widens images.tagger on a database that already holds images, both ways."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine

from services.common.database import create_engine
from services.dataset import records, schema
from services.dataset.server import MIGRATIONS

VERSION_TABLE = "alembic_version_dataset"
LONGEST_TAGGER = "taggers/" + "a" * 63


def _move(engine: Engine, revision: str, *, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["version_table"] = VERSION_TABLE
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Iterator[Engine]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database(f"mig3_{uuid.uuid4().hex[:8]}")
    else:
        url = f"sqlite:///{tmp_path / 'dataset.db'}"
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _add_image(engine: Engine, image_id: str, sha256: str, tagger: str) -> None:
    now = records.now()
    with engine.begin() as conn:
        conn.execute(schema.images.insert().values(
            id=image_id, dataset_id="d1", role="training", filename="a.png", content_type="image/png",
            sha256=sha256, size_bytes=10, width=64, height=64, original_key=f"k/{image_id}",
            thumbnail_key=f"t/{image_id}", tags=["cat", "sitting"], repeat=0, warnings=[], create_time=now,
            update_time=now, tagging_state="done", tagger=tagger, auto_tags=[{"tag": "cat", "score": 0.9,
                                                                              "category": "general"}]))


def _taggers(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {row.id: row.tagger for row in conn.execute(sa.select(schema.images.c.id, schema.images.c.tagger))}


def test_existing_images_survive_and_take_the_longest_names(engine):
    _move(engine, "0002")
    now = records.now()
    with engine.begin() as conn:
        conn.execute(schema.datasets.insert().values(id="d1", tenant="t", display_name="d", description="",
                                                     family="sd15", default_repeat=1, create_time=now,
                                                     update_time=now))
    _add_image(engine, "i1", "1" * 64, "taggers/builtin")

    _move(engine, "head")
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.images).where(schema.images.c.id == "i1")).one()
        assert (row.tagger, row.tags, row.auto_tags[0]["tag"]) == ("taggers/builtin", ["cat", "sitting"], "cat")
        assert compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}),
                                schema.metadata) == []
    _add_image(engine, "i2", "2" * 64, LONGEST_TAGGER)
    assert _taggers(engine) == {"i1": "taggers/builtin", "i2": LONGEST_TAGGER}
    with pytest.raises(sa.exc.IntegrityError):  # the rebuilt table kept its constraints
        _add_image(engine, "i3", "2" * 64, "taggers/builtin")

    # Down again, names that only fit the wider column are cut rather than refused.
    _move(engine, "0002", down=True)
    assert _taggers(engine) == {"i1": "taggers/builtin", "i2": LONGEST_TAGGER[:64]}
    _move(engine, "head")
