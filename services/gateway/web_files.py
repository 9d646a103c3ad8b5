"""The web workbench's built files (web/dist), served by the gateway's HTTP side beside the API.

Written here rather than taken from a framework: the gateway is a bare ASGI application (no
Starlette), and what it needs is small — GET/HEAD of files under one folder, the single page's
index for every other path (its routes live after `#`), immutable caching of the hashed assets,
and ETags. The files are read once at start: a build is a release, and reading per request would
put file I/O on the event loop that relays every call."""

from __future__ import annotations

import hashlib
import mimetypes
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.errors import ConfigurationError
from services.gateway.asgi import ASGIApp, Receive, Scope, Send

INDEX = "index.html"
# Vite names every asset by its content's hash: a path never changes what it serves.
IMMUTABLE_PREFIX = "assets/"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml",
          ".json": "application/json", ".png": "image/png", ".ico": "image/x-icon", ".woff2": "font/woff2"}


def content_security_policy(store_origins: Sequence[str]) -> str:
    """The page's policy: it talks to the gateway (its own origin) and to the object store (presigned
    uploads and downloads, on the store's own origins), and shows images from the store; it may reach
    nothing else. With no store origins named, only its own origin."""
    store = "".join(f" {origin}" for origin in store_origins)
    return (f"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            f"img-src 'self' blob: data:{store}; connect-src 'self'{store}; frame-ancestors 'none'; "
            "base-uri 'self'; form-action 'none'")


@dataclass(frozen=True)
class WebFile:
    body: bytes
    content_type: str
    etag: bytes
    cache_control: bytes


def _content_type(path: pathlib.Path) -> str:
    found = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"{found}; charset=utf-8" if found.startswith("text/") or found.endswith("javascript") else found


def load_web_files(root: pathlib.Path) -> dict[str, WebFile]:
    """Every file under `root` by its path relative to it ("index.html", "assets/index-3f2a.js")."""
    files: dict[str, WebFile] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        body = path.read_bytes()
        immutable = relative.startswith(IMMUTABLE_PREFIX)
        files[relative] = WebFile(
            body=body, content_type=_content_type(path),
            etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"'.encode(),
            cache_control=b"public, max-age=31536000, immutable" if immutable else b"no-cache")
    if INDEX not in files:
        raise ConfigurationError(f"KILN_WEB_DIR={root} holds no {INDEX}: build the workbench with `make web`, "
                                 "or set KILN_WEB_DIR=off to serve the API alone")
    return files


def web_files_app(files: dict[str, WebFile], policy: str) -> ASGIApp:
    """GET and HEAD of the workbench (the caller routes only those here): a known file, or the index
    for any path that names none (a missing asset under assets/ is a 404, so a stale page fails
    loudly instead of parsing HTML as script). `policy`: the page's Content Security Policy."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        head = scope["method"] == "HEAD"
        relative = scope["path"].lstrip("/")
        found = files.get(relative)
        if found is None:
            if relative.startswith(IMMUTABLE_PREFIX):
                missing = b"no such file\n"
                await _send(send, 404, b"text/plain; charset=utf-8", b"" if head else missing,
                            [(b"content-length", str(len(missing)).encode())])
                return
            found = files[INDEX]
        headers = [(b"etag", found.etag), (b"cache-control", found.cache_control),
                   (b"x-content-type-options", b"nosniff")]
        if found.content_type.startswith("text/html"):
            headers += [(b"content-security-policy", policy.encode()), (b"referrer-policy", b"no-referrer")]
        if _unchanged(_header(scope, b"if-none-match"), found.etag):
            await _send(send, 304, None, b"", headers)
            return
        await _send(send, 200, found.content_type.encode(), b"" if head else found.body,
                    [*headers, (b"content-length", str(len(found.body)).encode())])

    return app


def _unchanged(if_none_match: bytes | None, etag: bytes) -> bool:
    """If-None-Match's weak comparison: `*`, or any tag of its list equal to ours once W/ is set aside."""
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix(b"W/") for tag in if_none_match.split(b",")]
    return b"*" in tags or etag in tags


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope.get("headers", ()) if key == name), None)


async def _send(send: Send, status: int, content_type: bytes | None, body: bytes,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    start_headers = [*([(b"content-type", content_type)] if content_type else []), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})
