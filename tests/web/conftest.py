"""One stack (`kiln up`'s processes) and one Chromium for all of the workbench's browser tests;
a fresh browser context (no storage, no cache) for each test."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from kiln import Client
from services.stack import Stack, running_stack
from services.tagger.moderation import DEFAULT_RULES, ModerationPolicy, ModerationRule, SignalSource
from tests.web.browser import ROOT, chromium_path

# Each expectation in the tests waits for the page up to this long: training and tagging run on
# two shared cores.
EXPECT_TIMEOUT_MS = 60_000
expect.set_options(timeout=EXPECT_TIMEOUT_MS)

# The stack's tagger screens with the default rules and one more, on a signal that among the bundled
# photos only camera.png has (the detector's FACE_MALE: 0.55 on it, 0.51 at half its size and 0.60
# mirrored), so that the screening test gets real review and block verdicts from photos it makes of
# its own, and every other test's photos are screened as before.
SCREENING_RULE = ModerationRule(source=SignalSource.DETECTOR, label="FACE_MALE", review_at=0.4, block_at=0.575)
SCREENING_POLICY = ModerationPolicy(rules=(*DEFAULT_RULES, SCREENING_RULE))


@pytest.fixture(scope="session")
def web_stack(tmp_path_factory: pytest.TempPathFactory, models_dir: pathlib.Path) -> Iterator[Stack]:
    if not (ROOT / "web" / "dist" / "index.html").exists():
        raise RuntimeError("the workbench is not built: run `make web` (`make test` builds it)")
    with running_stack(tmp_path_factory.mktemp("web") / "kiln", models_dir=models_dir,
                       service_env={"tagger": {"KILN_TAGGER_POLICY": SCREENING_POLICY.model_dump_json()}}) as stack:
        yield stack


@pytest.fixture(scope="session")
def api(web_stack: Stack) -> Iterator[Client]:
    """The Python SDK as the same tenant as the page, to arrange what a test needs and check what
    the page did."""
    with Client(web_stack.grpc_address, web_stack.api_key) as client:
        yield client


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser, web_stack: Stack) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=f"http://{web_stack.http_address}", viewport={"width": 1280, "height": 900},
                                  locale="en-US")
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext, web_stack: Stack) -> Page:
    """The workbench, signed in through the link `kiln up` prints."""
    page = context.new_page()
    page.goto(web_stack.web_url)
    return page
