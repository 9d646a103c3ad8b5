"""The web workbench's files on the gateway's HTTP side: every page address answers the single
page, hashed assets are cached for good and a missing one is a 404, revalidation by ETag, a
Content Security Policy on the page, and the API beside it unchanged."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from services.gateway.server import GatewayService
from services.gateway.settings import GatewaySettings
from services.gateway.web_files import content_security_policy, load_web_files, web_files_app

INDEX = b"<!doctype html><title>Kiln</title><script type=module src=/assets/index-1a2b.js></script>"
SCRIPT = b"console.log('workbench')"
STORE = "http://store.example:8333"


@pytest.fixture(scope="module")
def web_build(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A build as `vite build` lays it out."""
    root = tmp_path_factory.mktemp("web-dist")
    (root / "assets").mkdir()
    (root / "index.html").write_bytes(INDEX)
    (root / "assets" / "index-1a2b.js").write_bytes(SCRIPT)
    (root / "assets" / "index-3c4d.css").write_bytes(b"body{}")
    return root


@pytest.fixture(scope="module")
def gateway_overrides(web_build: pathlib.Path) -> dict[str, Any]:
    return {"web_dir": str(web_build), "web_store_origins": [STORE]}


@pytest.fixture(scope="module")
def http(gateway: GatewayService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{gateway.http_address}", timeout=30) as client:
        yield client


@pytest.mark.parametrize("path", ["/", "/index.html", "/datasets/x/images", "/anything/else"])
def test_every_page_address_answers_the_single_page_with_its_policy(http: httpx.Client, path: str):
    answer = http.get(path)
    assert answer.status_code == 200 and answer.content == INDEX
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["content-security-policy"] == content_security_policy([STORE])
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_the_page_may_reach_its_own_origin_and_the_object_stores_only(http: httpx.Client):
    directives = dict(directive.strip().split(" ", 1)
                      for directive in http.get("/").headers["content-security-policy"].split(";"))
    assert directives["connect-src"].split() == ["'self'", STORE]
    assert directives["img-src"].split() == ["'self'", "blob:", "data:", STORE]
    assert directives["default-src"] == directives["script-src"] == "'self'"
    # Named no store, the page reaches its own origin alone.
    alone = dict(directive.strip().split(" ", 1) for directive in content_security_policy([]).split(";"))
    assert alone["connect-src"] == "'self'" and alone["img-src"] == "'self' blob: data:"


def test_a_store_origin_that_is_no_origin_is_refused_at_start():
    with pytest.raises(ValidationError):
        GatewaySettings(web_store_origins=["http://store.example; script-src *"])


def test_hashed_assets_are_cached_for_good_and_a_missing_one_is_not_found(http: httpx.Client):
    script = http.get("/assets/index-1a2b.js")
    assert script.status_code == 200 and script.content == SCRIPT
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "immutable" in script.headers["cache-control"]
    assert http.get("/assets/index-3c4d.css").headers["content-type"] == "text/css; charset=utf-8"
    # A page from an older build asking for its script gets no HTML in its place.
    missing = http.get("/assets/index-old.js")
    assert missing.status_code == 404 and b"<html" not in missing.content


def test_an_unchanged_file_is_revalidated_without_its_body(http: httpx.Client):
    first = http.get("/")
    again = http.get("/", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = http.head("/assets/index-1a2b.js")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(SCRIPT))


@pytest.mark.parametrize("if_none_match", ["{etag}", '"other", {etag}', "W/{etag}", '"a",W/{etag} , "b"', "*"])
def test_any_matching_tag_of_a_list_weak_or_star_revalidates(http: httpx.Client, if_none_match: str):
    etag = http.get("/").headers["etag"]
    again = http.get("/", headers={"if-none-match": if_none_match.format(etag=etag)})
    assert again.status_code == 304 and again.content == b""


def test_other_tags_get_the_file(http: httpx.Client):
    answer = http.get("/", headers={"if-none-match": '"other", W/"another"'})
    assert answer.status_code == 200 and answer.content == INDEX


def test_a_head_of_a_missing_asset_has_no_body(http: httpx.Client, web_build: pathlib.Path):
    missing = http.head("/assets/index-old.js")
    assert missing.status_code == 404 and missing.content == b""
    assert int(missing.headers["content-length"]) == len(http.get("/assets/index-old.js").content)
    # What the application itself sends (an HTTP server need not drop a HEAD's body for it).
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    app = web_files_app(load_web_files(web_build), content_security_policy([]))
    asyncio.run(app({"type": "http", "method": "HEAD", "path": "/assets/index-old.js", "headers": []}, receive, send))
    assert sent[0]["status"] == 404 and [m["body"] for m in sent[1:]] == [b""]


def test_only_reads_reach_the_files_and_the_api_beside_them_is_unchanged(http: httpx.Client):
    assert http.request("PUT", "/index.html").status_code == 404
    # An API path still reaches the API (here: its key check), never the page.
    api = http.post("/kiln.v1.DatasetService/ListDatasets", json={}, headers={"content-type": "application/json"})
    assert api.status_code == 401 and api.json()["code"] == "unauthenticated"
    assert http.get("/healthz").json() == {"status": "SERVING"}
    unknown = http.post("/kiln.v1.NoSuchService/Call", json={})
    assert unknown.status_code == 404
