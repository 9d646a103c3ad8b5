"""The web workbench's files on the gateway's HTTP side: every page address answers the single
page, hashed assets are cached for good and a missing one is a 404, revalidation by ETag, a
Content Security Policy on the page, and the API beside it unchanged."""

from __future__ import annotations

import pathlib
from typing import Any

import httpx
import pytest

from services.gateway.server import GatewayService
from services.gateway.web_files import CONTENT_SECURITY_POLICY

INDEX = b"<!doctype html><title>Kiln</title><script type=module src=/assets/index-1a2b.js></script>"
SCRIPT = b"console.log('workbench')"


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
    return {"web_dir": str(web_build)}


@pytest.fixture(scope="module")
def http(gateway: GatewayService) -> httpx.Client:
    with httpx.Client(base_url=f"http://{gateway.http_address}", timeout=30) as client:
        yield client


@pytest.mark.parametrize("path", ["/", "/index.html", "/datasets/x/images", "/anything/else"])
def test_every_page_address_answers_the_single_page_with_its_policy(http: httpx.Client, path: str):
    answer = http.get(path)
    assert answer.status_code == 200 and answer.content == INDEX
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["x-content-type-options"] == "nosniff"


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


def test_only_reads_reach_the_files_and_the_api_beside_them_is_unchanged(http: httpx.Client):
    assert http.request("PUT", "/index.html").status_code == 404
    # An API path still reaches the API (here: its key check), never the page.
    api = http.post("/kiln.v1.DatasetService/ListDatasets", json={}, headers={"content-type": "application/json"})
    assert api.status_code == 401 and api.json()["code"] == "unauthenticated"
    assert http.get("/healthz").json() == {"status": "SERVING"}
    unknown = http.post("/kiln.v1.NoSuchService/Call", json={})
    assert unknown.status_code == 404
