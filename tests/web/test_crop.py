"""The crop step: a batch focus crop to one of the family's sizes with its progress,
every box drawn over its image, a box moved by hand (pointer and keyboard) and saved as a MANUAL
crop; the accessibility check."""

from __future__ import annotations

import pathlib

import pytest
from playwright.sync_api import Page, expect

from kiln import Client
from kiln.v1 import dataset_pb2 as dpb
from services.common.bundled_data import samples_dir
from tests.web.browser import accessibility_violations, screenshot

SAMPLES = ["astronaut.png", "chelsea.png", "rocket.jpg"]
# How the page writes a size between its width and height (a multiplication sign).
BY = " \N{MULTIPLICATION SIGN} "


@pytest.fixture(scope="module")
def samples() -> pathlib.Path:
    return samples_dir()


def open_crop(page: Page, api: Client, name: str, samples: pathlib.Path, files: list[str]) -> str:
    """A new SD1.5 dataset holding `files`, its crop step open in the page; returns its name."""
    dataset = api.create_dataset(name, family="sd15").name
    for filename in files:
        api.upload_file(dataset, samples / filename)
    page.goto(f"/#/datasets/{dataset.removeprefix('datasets/')}/crop")
    expect(page.get_by_test_id("crop-card")).to_have_count(len(files))
    return dataset


def test_a_focus_crop_runs_with_progress_and_draws_every_box(page: Page, api: Client, samples: pathlib.Path):
    dataset = open_crop(page, api, "Focus crop", samples, SAMPLES)
    expect(page.get_by_test_id("crop-state").first).to_have_text("Not cropped yet")
    # The family's sizes, and only those.
    sizes = page.get_by_role("group", name="Crop size").get_by_role("radio")
    expect(sizes).to_have_count(3)
    expect(page.get_by_label(f"512{BY}768")).to_be_visible()
    # Every text the progress line and the cards show, in order, as the stream goes.
    page.evaluate("""() => {
        window.cropSeen = [];
        new MutationObserver(() => {
          const line = document.querySelector('[data-testid=crop-progress-text]');
          const states = [...document.querySelectorAll('[data-testid=crop-state]')].map((s) => s.textContent.trim());
          window.cropSeen.push({ line: line ? line.textContent.trim() : '', states });
        }).observe(document.body, { subtree: true, childList: true, characterData: true });
      }""")
    page.get_by_label("Focus crop").check()
    page.get_by_label(f"768{BY}512").check()
    page.get_by_role("button", name="Crop all images (3)").click()

    # The samples are smaller than 768x512 on some side, so each was upscaled, and the page says so.
    expect(page.get_by_test_id("crop-progress-text")).to_have_text(
        "Cropped 3 of 3. 3 upscaled (smaller than the target size).")
    expect(page.get_by_test_id("crop-progress").get_by_role("progressbar", name="Crop progress")) \
        .to_have_attribute("value", "3")
    expect(page.get_by_test_id("crop-state").filter(has_text=f"Focus crop, 768{BY}512")).to_have_count(3)
    expect(page.get_by_test_id("crop-box")).to_have_count(3)
    expect(page.get_by_test_id("crop-state").filter(has_text="Upscaled")).to_have_count(3)
    seen = page.evaluate("() => window.cropSeen")
    assert any(s["line"].startswith("Cropping:") for s in seen), "no progress was shown while the crop ran"
    assert any("Waiting to be cropped…" in s["states"] for s in seen), "the images were not shown waiting"

    for image in api.list_images(dataset):
        assert (image.crop.mode, image.crop.target_width, image.crop.target_height) == (dpb.CROP_MODE_FOCUS, 768, 512)
        card = page.locator(f'[data-testid=crop-card][data-name="{image.name}"]')
        box = image.crop.box
        expect(card).to_have_attribute("data-crop", f"{box.left},{box.top},{box.width},{box.height}")
        # The box is drawn at the image's scale: its share of the picture is the crop's share of the original.
        drawn = card.get_by_test_id("crop-box").bounding_box()
        picture = card.get_by_test_id("thumbnail").bounding_box()
        assert drawn is not None and picture is not None
        assert abs(drawn["width"] / picture["width"] - box.width / image.width) < 0.02
    screenshot(page, "crop")


def test_a_box_dragged_or_moved_by_keys_is_saved_as_a_manual_crop(page: Page, api: Client, samples: pathlib.Path):
    dataset = open_crop(page, api, "Manual crop", samples, ["chelsea.png"])
    api.crop_images(dataset, "center", 512, 512, progress=False)
    page.reload()
    # chelsea.png is 451x300: the centre square is 300 px wide, 75 px from the left.
    card = page.get_by_test_id("crop-card")
    expect(card).to_have_attribute("data-crop", "75,0,300,300")
    expect(card.get_by_test_id("crop-state")).to_contain_text(f"Center crop, 512{BY}512")

    box = card.get_by_test_id("crop-box")
    area = box.bounding_box()
    assert area is not None
    page.mouse.move(area["x"] + area["width"] / 2, area["y"] + area["height"] / 2)
    page.mouse.down()
    page.mouse.move(area["x"] - 200, area["y"] + area["height"] / 2, steps=5)
    page.mouse.up()
    # Dragged past the left edge, it stops there.
    expect(card).to_have_attribute("data-crop", "0,0,300,300")
    expect(card.get_by_test_id("crop-state")).to_contain_text(f"Set by hand, 512{BY}512")
    image = next(iter(api.list_images(dataset)))
    assert image.crop.mode == dpb.CROP_MODE_MANUAL
    assert (image.crop.box.left, image.crop.box.top, image.crop.box.width, image.crop.box.height) == (0, 0, 300, 300)
    assert (image.crop.target_width, image.crop.target_height) == (512, 512)

    # By keyboard: two steps of 1% of the width (5 px) to the right, saved once the keys pause.
    box.focus()
    box.press("ArrowRight")
    box.press("ArrowRight")
    expect(card).to_have_attribute("data-crop", "10,0,300,300")
    image = next(iter(api.list_images(dataset)))
    assert (image.crop.mode, image.crop.box.left) == (dpb.CROP_MODE_MANUAL, 10)
    # The minus key shrinks it by 5% around its centre (160, 150), square as the target is.
    box.press("-")
    expect(card).to_have_attribute("data-crop", "17,7,286,286")
    stored = next(iter(api.list_images(dataset))).crop.box
    assert (stored.left, stored.top, stored.width, stored.height) == (17, 7, 286, 286)


def test_the_crop_page_passes_the_accessibility_check(page: Page, api: Client, samples: pathlib.Path):
    dataset = open_crop(page, api, "Accessible crop", samples, ["rocket.jpg", "coffee.png"])
    api.crop_images(dataset, "center", 512, 512, progress=False)
    page.reload()
    expect(page.get_by_test_id("crop-box")).to_have_count(2)
    assert accessibility_violations(page) == []
    page.get_by_label("Language").select_option("zh")
    expect(page.get_by_role("heading", name="批量裁剪")).to_be_visible()
    assert accessibility_violations(page) == []
