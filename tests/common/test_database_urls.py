"""A database URL shown to an operator never holds its password, whether or not it parses, and a
postgres:// URL says what to write instead."""

from __future__ import annotations

import pytest

from services.common.database_urls import scheme_hint, shown_url


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://kiln:s3cretpw@db:5432/kiln", "postgresql://kiln:***@db:5432/kiln"),
    ("postgres://kiln:s3cretpw@db/kiln", "postgres://kiln:***@db/kiln"),
    ("postgresql+psycopg://kiln:s3cretpw@db/kiln?sslmode=require", "postgresql+psycopg://kiln:***@db/kiln?sslmode=require"),
    # Not parseable (a port that is no number), and a password holding an unencoded @.
    ("postgresql://kiln:s3cretpw@db:port/kiln", "postgresql://kiln:***@db:port/kiln"),
    ("postgresql://kiln:s3cret@pw@db/kiln", "postgresql://kiln:***@db/kiln"),
    # Nothing to hide.
    ("postgresql://kiln@db/kiln", "postgresql://kiln@db/kiln"),
    ("sqlite:////var/lib/kiln/data/x.db", "sqlite:////var/lib/kiln/data/x.db"),
    ("not a url", "not a url"),
])
def test_the_password_is_never_shown(url, shown):
    assert shown_url(url) == shown


def test_postgres_scheme_is_told_to_write_postgresql():
    assert scheme_hint("postgres://kiln:pw@db/kiln") == ": write postgresql:// instead of postgres://"
    assert scheme_hint("postgresql://kiln:pw@db/kiln") == ""
    assert scheme_hint("not a url") == ""
