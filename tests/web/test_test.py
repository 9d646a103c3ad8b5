"""The test page: pictures drawn with the chosen parameters appear as they
finish, the comparison grid of epochs x strengths fills cell by cell, a refused prompt is shown on
its field, a seed that isn't a whole number is caught on its field before asking; both languages and
the accessibility check."""

from __future__ import annotations

import pathlib

from PIL import Image
from playwright.sync_api import Page, expect

from kiln import Client
from tests.web.browser import accessibility_violations, screenshot
from tests.web.training_jobs import FAST_EPOCHS, TRIGGER, finished_job, job_path


def test_pictures_appear_drawn_with_the_chosen_parameters(page: Page, api: Client, tmp_path: pathlib.Path):
    job = finished_job(api)
    page.goto(job_path(job, "test"))
    page.get_by_label("Prompt", exact=True).fill(f"{TRIGGER}, on a beach")
    page.get_by_label("Negative prompt").fill("blurry")
    page.get_by_label("Seed").fill("77")
    page.get_by_label("Sampler").select_option("euler")
    page.get_by_role("spinbutton", name="Steps", exact=True).fill("2")
    page.get_by_label("CFG scale").fill("5")
    page.get_by_test_id("test-width").fill("64")
    page.get_by_test_id("test-height").fill("96")
    page.get_by_role("combobox", name="Epoch", exact=True).select_option("1")
    page.get_by_label("LoRA strength").fill("0.8")
    page.get_by_label("Number of pictures").fill("2")
    page.get_by_role("button", name="Generate").click()

    results = page.get_by_test_id("test-result")
    expect(results).to_have_count(2)
    expect(page.get_by_test_id("test-announcement")).to_have_text("Done: 2 pictures.")
    assert [r.get_attribute("data-seed") for r in results.all()] == ["77", "78"]
    assert {(r.get_attribute("data-epoch"), r.get_attribute("data-strength")) for r in results.all()} == {("1", "0.8")}
    expect(results.first.get_by_test_id("test-image")).to_be_visible()
    # The picture the API keeps has the size asked for.
    name = results.first.get_attribute("data-name")
    assert name and name.startswith(f"{job.name}/generations/")
    with Image.open(api.save_artifact(name, tmp_path / "picture.png")) as picture:
        assert picture.size == (64, 96)
    screenshot(page, "test")


def test_the_grid_has_a_picture_per_epoch_and_strength(page: Page, api: Client):
    job = finished_job(api)
    page.goto(job_path(job, "test"))
    page.get_by_role("spinbutton", name="Steps", exact=True).fill("2")
    page.get_by_label("Strengths (columns)").fill("0.5, 1")
    page.get_by_role("button", name="Draw the grid").click()
    cells = page.get_by_test_id("grid-cell")
    expect(cells).to_have_count((FAST_EPOCHS + 1) * 2)
    expect(page.locator("[data-testid=grid-cell][data-filled=true]")).to_have_count((FAST_EPOCHS + 1) * 2)
    expect(page.get_by_test_id("grid-sheet")).to_be_visible()
    drawn = {(c.get_attribute("data-epoch"), c.get_attribute("data-strength")) for c in cells.all()}
    assert drawn == {(str(e), s) for e in range(FAST_EPOCHS + 1) for s in ("0.5", "1")}
    sheet = page.request.get(page.get_by_test_id("grid-sheet").get_attribute("href") or "")
    assert sheet.ok and sheet.body()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_reads_in_both_languages_and_a_refused_prompt_is_shown_on_its_field(page: Page, api: Client):
    job = finished_job(api)
    page.goto(job_path(job, "test"))
    expect(page.get_by_role("heading", name="Test the model")).to_be_visible()
    assert accessibility_violations(page) == []
    page.get_by_label("Language").select_option("zh")
    expect(page.get_by_role("heading", name="模型测试")).to_be_visible()
    expect(page.get_by_label("采样算法")).to_be_visible()
    expect(page.get_by_role("button", name="生成对比网格")).to_be_visible()
    assert accessibility_violations(page) == []
    page.get_by_label("语言").select_option("en")

    page.get_by_label("Prompt", exact=True).fill("")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#test-prompt-errors")).to_contain_text("prompt")


def test_an_empty_or_fractional_seed_is_shown_on_its_field(page: Page, api: Client):
    job = finished_job(api)
    page.goto(job_path(job, "test"))
    seed = page.get_by_label("Seed")
    for typed in ("", "1.5"):
        seed.fill(typed)
        page.get_by_role("button", name="Generate").click()
        expect(seed).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#test-seed-errors li")).to_have_text("Enter a whole number, 0 or more.")
    # Nothing was asked for, and the form still works once the seed is fixed.
    expect(page.get_by_test_id("test-announcement")).to_have_text("")
    seed.fill("5")
    page.get_by_role("spinbutton", name="Steps", exact=True).fill("2")
    page.get_by_test_id("test-width").fill("64")
    page.get_by_test_id("test-height").fill("64")
    page.get_by_role("button", name="Generate").click()
    expect(seed).to_have_attribute("aria-invalid", "false")
    expect(page.locator("#test-seed-errors li")).to_have_count(0)
    expect(page.get_by_test_id("test-result")).to_have_count(1)
    assert page.get_by_test_id("test-result").get_attribute("data-seed") == "5"
