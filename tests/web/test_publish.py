"""The publish page: each saved epoch with its previews; the chosen epoch's
LoRA downloads as the file the API keeps; publishing with a name, description, trigger words and
showcase previews makes the model the API lists; a taken name is refused on its field; the retrain
link opens the parameters step with this job; both languages and the accessibility check."""

from __future__ import annotations

import hashlib
import pathlib

from playwright.sync_api import Page, expect

from kiln import Client
from kiln.v1 import trainer_pb2 as tpb
from tests.web.browser import accessibility_violations, screenshot
from tests.web.training_jobs import FAST_EPOCHS, PREVIEWS_PER_EPOCH, finished_job, job_path


def test_each_epoch_shows_its_previews_and_its_lora_downloads(page: Page, api: Client, tmp_path: pathlib.Path):
    job = finished_job(api)
    page.goto(job_path(job, "publish"))
    options = page.get_by_test_id("epoch-option")
    expect(options).to_have_count(FAST_EPOCHS)
    for option in options.all():
        expect(option.get_by_test_id("preview")).to_have_count(PREVIEWS_PER_EPOCH)
    expect(page.get_by_role("radio", name="Epoch 2")).to_be_checked()
    page.get_by_role("radio", name="Epoch 1").check()
    link = page.get_by_test_id("download-lora")
    expect(link).to_have_text("Download the LoRA of epoch 1")
    with page.expect_download() as started:
        link.click()
    download = started.value
    assert download.suggested_filename.endswith(".safetensors")
    saved = pathlib.Path(download.path())
    expected = api.download_epoch(job.name, 1, tmp_path / "epoch1.safetensors").read_bytes()
    assert saved.read_bytes() == expected
    assert hashlib.sha256(expected).hexdigest() == job.epochs[0].lora.sha256


def test_an_epoch_is_published_with_its_name_triggers_and_showcase(page: Page, api: Client):
    job = finished_job(api)
    page.goto(job_path(job, "publish"))
    page.get_by_role("radio", name="Epoch 2").check()
    page.get_by_label("Model name").fill("Web published")
    page.get_by_label("Description").fill("made on the publish page")
    page.get_by_label("Trigger words").fill("webtrigger, smile")
    page.get_by_label("Everyone in the organisation").check()
    showcase = page.get_by_test_id("showcase")
    showcase.get_by_label("Preview 2").uncheck()
    showcase.get_by_label("Preview 4").uncheck()
    page.get_by_role("button", name="Publish epoch 2").click()

    row = page.get_by_test_id("published-model").filter(has_text="Web published")
    expect(row).to_be_visible()
    expect(page.get_by_test_id("publish-announcement")).to_have_text("Published “Web published”.")
    name = row.get_attribute("data-name")
    model = api.trainer.GetModel(tpb.GetModelRequest(name=name))
    assert (model.display_name, model.description, list(model.trigger_words)) == (
        "Web published", "made on the publish page", ["webtrigger", "smile"])
    assert (model.training_job, model.epoch, model.visibility) == (job.name, 2, tpb.Model.VISIBILITY_TENANT)
    assert len(model.showcase) == 2 and model.file.size_bytes > 0
    assert name in [m.name for m in api.trainer.ListModels(tpb.ListModelsRequest(page_size=100)).models]
    expect(row.get_by_test_id("test-image")).to_have_count(2)
    screenshot(page, "publish")

    # The same name again: refused, on its field.
    page.get_by_label("Model name").fill("Web published")
    page.get_by_role("button", name="Publish epoch 2").click()
    expect(page.get_by_label("Model name")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#publish-name-errors")).to_contain_text("taken")


def test_retrain_opens_the_parameters_with_this_job_and_the_page_reads_in_both_languages(page: Page, api: Client):
    job = finished_job(api)
    page.goto(job_path(job, "publish"))
    retrain = page.get_by_test_id("retrain")
    dataset_id = job.dataset.removeprefix("datasets/")
    expect(retrain).to_have_attribute("href", f"#/datasets/{dataset_id}/train?from=trainingJobs%2F"
                                               f"{job.name.removeprefix('trainingJobs/')}")
    assert accessibility_violations(page) == []
    page.get_by_label("Language").select_option("zh")
    expect(page.get_by_role("heading", name="模型发布")).to_be_visible()
    expect(page.get_by_label("触发词")).to_be_visible()
    expect(page.get_by_role("link", name="调整参数重新训练")).to_be_visible()
    assert accessibility_violations(page) == []
    retrain.click()
    expect(page).to_have_url(f"{page.url.split('#')[0]}#/datasets/{dataset_id}/train?from=trainingJobs%2F"
                             f"{job.name.removeprefix('trainingJobs/')}")
