"""Database URLs as an operator may see them: never with their password, and with a hint when
the scheme is one SQLAlchemy doesn't know but the operator surely meant another."""

from __future__ import annotations

import re

import sqlalchemy as sa

# Heroku, docker images and libpq accept postgres://; SQLAlchemy knows only postgresql://.
_SCHEME_HINTS = {"postgres": "postgresql"}
# user:password@ after the scheme, up to the last @ (a password may hold @ when not percent-encoded).
_CREDENTIALS = re.compile(r"^(?P<head>[^:/]*://[^:/@]*:).*@", re.DOTALL)


def shown_url(url: str) -> str:
    """`url` with its password replaced by ***, whether or not it parses."""
    if url.count("@") == 1:
        try:
            return sa.engine.make_url(url).render_as_string(hide_password=True)
        except (sa.exc.ArgumentError, ValueError):
            pass
    # Unparsed, or a password with an unencoded @ (SQLAlchemy would take its tail for the host).
    return _CREDENTIALS.sub(r"\g<head>***@", url, count=1)


def scheme_hint(url: str) -> str:
    """What to write instead of a scheme SQLAlchemy doesn't know but is a known alias; empty if none."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    meant = _SCHEME_HINTS.get(scheme.lower())
    return f": write {meant}:// instead of {scheme}://" if meant else ""
