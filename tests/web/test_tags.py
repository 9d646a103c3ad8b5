"""The tags step: captions as chips that arrive live from the tagger, edited one
image at a time (add, reorder by keyboard-reachable buttons, remove) and in batch (a trigger word
at the head, replace, remove), the tag frequency list, both languages and the accessibility check."""

from __future__ import annotations

import pathlib
import re

import pytest
from PIL import Image, ImageOps
from playwright.sync_api import Locator, Page, expect

from kiln import Client
from kiln.v1 import tagging_types_pb2 as ttpb
from services.common.bundled_data import samples_dir
from tests.web.browser import accessibility_violations, screenshot
from tests.web.samples import dataset_of_samples


def _captions(api: Client, dataset: str) -> dict[str, list[str]]:
    return {image.filename: list(image.tags) for image in api.list_images(dataset)}


def _card(page: Page, filename: str) -> Locator:
    return page.get_by_test_id("tag-image").filter(has=page.get_by_role("heading", name=filename))


def _chips(card: Locator) -> Locator:
    return card.get_by_test_id("chip-name")


@pytest.fixture(scope="module")
def tagged(api: Client) -> str:
    """A dataset of two sample photos, tagged by the stack's tagger."""
    return dataset_of_samples(api, "web tags", ("astronaut.png", "chelsea.png"))


def _open(page: Page, dataset: str) -> None:
    page.goto(f"/#/datasets/{dataset.removeprefix('datasets/')}/tags")
    expect(page.get_by_role("heading", name="Tags", level=2).first).to_be_visible()


def test_tags_appear_live_as_the_tagger_answers(page: Page, api: Client):
    dataset = api.create_dataset("web live tags", "sd15").name
    _open(page, dataset)
    expect(page.get_by_test_id("no-images")).to_be_visible()

    api.upload_file(dataset, samples_dir() / "astronaut.png")
    card = _card(page, "astronaut.png")
    expect(card).to_be_visible()
    tagged = api.wait_for_tagging(dataset, progress=False)
    expected = list(tagged[0].tags)
    assert expected, "the tagger gave the astronaut no tags"
    # The page was never reloaded: the chips came from its own polling.
    expect(_chips(card)).to_have_text(expected)
    expect(card.get_by_test_id("tagging-pending")).to_have_count(0)
    suggested = {tag.name for tag in tagged[0].auto_tagging.tags}
    assert set(expected) <= suggested


def test_a_tag_is_added_moved_and_removed_on_one_image(page: Page, api: Client, tagged: str):
    _open(page, tagged)
    card = _card(page, "chelsea.png")
    before = _captions(api, tagged)["chelsea.png"]
    expect(_chips(card)).to_have_text(before)

    card.get_by_label("Add a tag to chelsea.png").fill("kiln alpha")
    card.get_by_role("button", name="Add", exact=True).click()
    expect(_chips(card)).to_have_text([*before, "kiln alpha"])
    card.get_by_label("Add a tag to chelsea.png").fill("kiln beta")
    card.get_by_role("button", name="Add", exact=True).click()
    expect(_chips(card)).to_have_text([*before, "kiln alpha", "kiln beta"])
    assert _captions(api, tagged)["chelsea.png"] == [*before, "kiln alpha", "kiln beta"]

    # Reordered by keyboard: focus stays on the chip that moved, so it can move again.
    card.get_by_role("button", name="Move “kiln beta” left").focus()
    page.keyboard.press("Enter")
    expect(_chips(card)).to_have_text([*before, "kiln beta", "kiln alpha"])
    expect(card.get_by_role("button", name="Move “kiln beta” left")).to_be_focused()
    assert _captions(api, tagged)["chelsea.png"] == [*before, "kiln beta", "kiln alpha"]

    card.get_by_role("button", name="Remove “kiln alpha”").click()
    expect(_chips(card)).to_have_text([*before, "kiln beta"])
    card.get_by_role("button", name="Remove “kiln beta”").click()
    expect(_chips(card)).to_have_text(before)
    assert _captions(api, tagged)["chelsea.png"] == before


def test_batch_add_at_head_replace_and_remove_with_the_frequency_list(page: Page, api: Client, tagged: str):
    _open(page, tagged)
    batch = page.get_by_test_id("batch-tags")
    frequency = page.get_by_test_id("tag-frequency")
    expect(_chips(_card(page, "astronaut.png")).first).to_be_visible()

    batch.get_by_label("Action").select_option(label="Add at the head (trigger word)")
    batch.get_by_label("Tag", exact=True).fill("kilntrigger")
    batch.get_by_role("button", name="Apply").click()
    expect(batch.get_by_test_id("batch-result")).to_have_text("2 caption(s) changed")
    for filename in ("astronaut.png", "chelsea.png"):
        expect(_chips(_card(page, filename)).first).to_have_text("kilntrigger")
    assert all(tags[0] == "kilntrigger" for tags in _captions(api, tagged).values())
    row = frequency.get_by_test_id("frequency-row").filter(has_text="kilntrigger")
    expect(row).to_contain_text("2")
    screenshot(page, "tags")

    batch.get_by_label("Action").select_option(label="Replace")
    batch.get_by_label("Tag", exact=True).fill("kilntrigger")
    batch.get_by_label("Replace with").fill("kiln person")
    batch.get_by_role("button", name="Apply").click()
    expect(_chips(_card(page, "chelsea.png")).first).to_have_text("kiln person")
    assert all(tags[0] == "kiln person" and "kilntrigger" not in tags for tags in _captions(api, tagged).values())
    expect(frequency.get_by_test_id("frequency-row").filter(has_text="kiln person")).to_contain_text("2")
    expect(frequency.get_by_test_id("frequency-row").filter(has_text="kilntrigger")).to_have_count(0)

    # Only the selected image.
    _card(page, "astronaut.png").get_by_label("Select astronaut.png").check()
    batch.get_by_label("Action").select_option(label="Remove")
    batch.get_by_label("Tag", exact=True).fill("kiln person")
    batch.get_by_label("Selected images (1)").check()
    batch.get_by_role("button", name="Apply").click()
    expect(batch.get_by_test_id("batch-result")).to_have_text("1 caption(s) changed")
    captions = _captions(api, tagged)
    assert "kiln person" not in captions["astronaut.png"] and captions["chelsea.png"][0] == "kiln person"
    expect(frequency.get_by_test_id("frequency-row").filter(has_text="kiln person")).to_contain_text(
        re.compile(r"\b1$"))


def test_a_refused_tag_is_shown_on_its_field(page: Page, tagged: str):
    _open(page, tagged)
    batch = page.get_by_test_id("batch-tags")
    batch.get_by_label("Tag", exact=True).fill("a, b")
    batch.get_by_role("button", name="Apply").click()
    expect(batch.get_by_label("Tag", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(batch.locator("#batch-tag-errors li")).not_to_have_count(0)


def test_the_tags_page_in_chinese_and_the_accessibility_check(page: Page, tagged: str):
    _open(page, tagged)
    expect(_chips(_card(page, "astronaut.png")).first).to_be_visible()
    assert accessibility_violations(page) == []
    page.get_by_label("Language").select_option("zh")
    expect(page.get_by_role("heading", name="批量加标签")).to_be_visible()
    expect(page.get_by_role("heading", name="标签频率")).to_be_visible()
    assert accessibility_violations(page) == []


def test_the_screening_verdict_is_shown_on_blocked_and_review_images(page: Page, api: Client,
                                                                     tmp_path: pathlib.Path):
    # Two photos made of camera.png, screened by the stack's tagger under a rule on the detector's
    # FACE_MALE signal (tests/web/conftest.py): mirrored it scores past block_at, at half its size
    # between review_at and block_at. An allowed image shows no verdict.
    camera = Image.open(samples_dir() / "camera.png").convert("RGB")
    photos = {"blocked.png": ImageOps.mirror(camera), "review.png": camera.resize((256, 256)),
              "allowed.png": Image.open(samples_dir() / "rocket.jpg").convert("RGB")}
    dataset = api.create_dataset("web screening", "sd15").name
    for filename, picture in photos.items():
        picture.save(tmp_path / filename)
        api.upload_file(dataset, tmp_path / filename)
    screened = {image.filename: image.screening for image in api.wait_for_tagging(dataset, progress=False)}
    assert screened["blocked.png"].decision == ttpb.MODERATION_DECISION_BLOCK
    assert screened["review.png"].decision == ttpb.MODERATION_DECISION_REVIEW
    assert screened["allowed.png"].decision == ttpb.MODERATION_DECISION_ALLOW

    _open(page, dataset)
    for filename, heading in (("blocked.png", "Blocked by screening"), ("review.png", "asks for a review")):
        (finding,) = screened[filename].findings
        assert finding.label == "FACE_MALE"
        shown = _card(page, filename).get_by_test_id("screening")
        expect(shown).to_contain_text(heading)
        expect(shown).to_contain_text(f"FACE_MALE (detector) {_two_places(finding.score)}")
    expect(_card(page, "allowed.png")).to_be_visible()
    expect(_card(page, "allowed.png").get_by_test_id("screening")).to_have_count(0)


def _two_places(score: float) -> str:
    """A score as the page writes it in English: at most two decimals, no trailing zeros."""
    return f"{score:.2f}".rstrip("0").rstrip(".")
