"""The tags page's polling: a page in a background tab asks for nothing after its first read, and
catches up (uploads made elsewhere included) once shown again."""

from __future__ import annotations

from playwright.sync_api import Page, Request, expect

from kiln import Client
from services.common.bundled_data import samples_dir

# The page reads `document.hidden`; the test decides it through `window.kilnTestHidden`.
_HIDDEN_TAB = """
Object.defineProperty(document, "hidden", { configurable: true, get: () => window.kilnTestHidden ?? true });
"""


def _is_listing(request: Request) -> bool:
    return request.url.endswith("/ListImages")


def test_a_hidden_tags_page_reads_once_and_catches_up_when_shown(page: Page, api: Client):
    dataset = api.create_dataset("web tags hidden", "sd15").name
    listings: list[str] = []
    page.on("request", lambda request: listings.append(request.url) if _is_listing(request) else None)
    page.add_init_script(_HIDDEN_TAB)
    page.goto("about:blank")  # so that the next address loads the app anew, hidden from its start
    page.goto(f"/#/datasets/{dataset.removeprefix('datasets/')}/tags")
    expect(page.get_by_test_id("no-images")).to_be_visible()
    # A round trip of the page's own after its first read: a read that set off another (a loop)
    # has asked again by now.
    assert page.evaluate("fetch('/').then((answer) => answer.status)") == 200
    assert len(listings) == 1

    api.upload_file(dataset, samples_dir() / "astronaut.png")
    with page.expect_request(_is_listing):
        page.evaluate("window.kilnTestHidden = false; document.dispatchEvent(new Event('visibilitychange'))")
    expect(page.get_by_role("heading", name="astronaut.png")).to_be_visible()
