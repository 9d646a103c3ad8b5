"""The whole training flow in the browser, as a new user goes through it, every step through the
page alone: an empty dataset, uploads (one refused, with its reason), a focus crop, the tagger's
tags and a trigger word, parameters (a violation shown on its field first), training watched live
(the page reloaded mid-run resumes its stream), a test picture, and a published model. Each step
is checked on screen and through the API."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from kiln import Client
from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as tpb
from services.common.bundled_data import samples_dir

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png"]
TRIGGER = "flowtrigger"
BY = " \N{MULTIPLICATION SIGN} "  # as the page writes sizes


def _id(page: Page, kind: str) -> str:
    found = re.search(rf"#/{kind}/([^/?]+)", page.url)
    assert found is not None, page.url
    return found.group(1)


def test_from_an_empty_dataset_to_a_published_model(page: Page, api: Client, tmp_path):
    # Datasets: create one.
    page.get_by_label("Name", exact=True).fill("Whole flow")
    page.get_by_label("SD 1.5").check()
    page.get_by_role("button", name="Create dataset").click()
    expect(page.get_by_test_id("dataset-title")).to_have_text("Whole flow")
    dataset = f"datasets/{_id(page, 'datasets')}"

    # Images: three photos and a text file dressed as a PNG, which the API refuses with its reason.
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    page.get_by_test_id("file-input").set_input_files([str(samples_dir() / p) for p in PHOTOS] + [str(fake)])
    refused = page.get_by_test_id("upload").filter(has_text="notes.png")
    expect(refused).to_have_attribute("data-stage", "refused")
    expect(refused).to_contain_text("not PNG or JPEG")
    expect(page.get_by_test_id("image-card")).to_have_count(len(PHOTOS))
    assert sorted(i.filename for i in api.list_images(dataset)) == sorted(PHOTOS)

    # Crop: a focus crop of every image to 512 x 512.
    page.get_by_test_id("tab-crop").click()
    page.get_by_label("Focus crop").check()
    page.get_by_label(f"512{BY}512").check()
    page.get_by_role("button", name=f"Crop all images ({len(PHOTOS)})").click()
    expect(page.get_by_test_id("crop-state").filter(has_text=f"Focus crop, 512{BY}512")).to_have_count(len(PHOTOS))
    assert {(i.crop.mode, i.crop.target_width) for i in api.list_images(dataset)} == {(dpb.CROP_MODE_FOCUS, 512)}

    # Tags: the tagger's tags arrive, then the trigger word goes at the head of every caption.
    page.get_by_test_id("tab-tags").click()
    expect(page.get_by_test_id("tag-image")).to_have_count(len(PHOTOS))
    expect(page.get_by_test_id("tagging-pending")).to_have_count(0)
    batch = page.get_by_test_id("batch-tags")
    batch.get_by_label("Action").select_option(label="Add at the head (trigger word)")
    batch.get_by_label("Tag", exact=True).fill(TRIGGER)
    batch.get_by_role("button", name="Apply").click()
    expect(batch.get_by_test_id("batch-result")).to_have_text(f"{len(PHOTOS)} caption(s) changed")
    assert all(i.tags[0] == TRIGGER for i in api.list_images(dataset))

    # Parameters: a refused value is shown on its field before anything is submitted; then a
    # small, quick run of the demo preset.
    page.get_by_test_id("tab-train").click()
    page.get_by_label("Model theme").select_option("presets/demo-tiny-sd15")
    epochs = page.get_by_label("Epoch", exact=True)
    epochs.fill("0")
    expect(epochs).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#param-epochs-errors")).to_contain_text("at least 1")
    epochs.fill("2")
    page.get_by_label("Repeat", exact=True).fill("2")
    expect(page.get_by_test_id("formula-steps")).to_have_text(str(len(PHOTOS) * 2 * 2))
    page.get_by_label("Preview prompt").fill(f"{TRIGGER}, smiling")
    page.get_by_label("Pro mode").check()
    page.get_by_label("Training resolution").fill("64x64")
    page.get_by_label("Preview width").fill("64")
    page.get_by_label("Preview height").fill("64")
    page.get_by_label("Preview sampling steps").fill("2")
    page.get_by_label("Job name").fill("whole flow run")
    page.get_by_role("button", name="Start training").click()
    expect(page).to_have_url(re.compile(r"#/jobs/[^/]+/progress$"))
    job = f"trainingJobs/{_id(page, 'jobs')}"
    created = api.trainer.GetTrainingJob(tpb.GetTrainingJobRequest(name=job))
    assert created.dataset == dataset and created.display_name == "whole flow run"

    # Training: watched live; a reload mid-run picks the stream up where it was.
    state = page.get_by_test_id("job-state")
    expect(state).to_have_attribute("data-state", re.compile("QUEUED|RUNNING|SUCCEEDED"))
    expect(page.get_by_test_id("events-seen")).not_to_have_attribute("data-count", "0")
    page.reload()
    expect(state).to_have_attribute("data-state", "SUCCEEDED")
    events = list(api.watch_job(job))
    counter = page.get_by_test_id("events-seen")
    expect(counter).to_have_attribute("data-last-seq", str(events[-1].seq))
    expect(counter).to_have_attribute("data-count", str(len(events)))
    rows = page.get_by_test_id("epoch-row")
    expect(rows).to_have_count(2)
    expect(page.get_by_test_id("loss-chart")).not_to_have_attribute("data-points", "0")

    # Test: one picture with the trained LoRA.
    page.get_by_test_id("tab-test").click()
    page.get_by_label("Prompt", exact=True).fill(f"{TRIGGER}, on a beach")
    page.get_by_role("spinbutton", name="Steps", exact=True).fill("2")
    page.get_by_test_id("test-width").fill("64")
    page.get_by_test_id("test-height").fill("64")
    page.get_by_label("Number of pictures").fill("1")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_test_id("test-result")).to_have_count(1)
    expect(page.get_by_test_id("test-result").first.get_by_test_id("test-image")).to_be_visible()

    # Publish: epoch 2, with a name, description and trigger words.
    page.get_by_test_id("tab-publish").click()
    page.get_by_role("radio", name="Epoch 2").check()
    expect(page.get_by_test_id("download-lora")).to_have_text("Download the LoRA of epoch 2")
    page.get_by_label("Model name").fill("Whole flow model")
    page.get_by_label("Description").fill("from an empty dataset, in the browser")
    page.get_by_label("Trigger words").fill(TRIGGER)
    page.get_by_role("button", name="Publish epoch 2").click()
    expect(page.get_by_test_id("published-model").filter(has_text="Whole flow model")).to_be_visible()
    published = [m for m in api.trainer.ListModels(tpb.ListModelsRequest(page_size=100)).models
                 if m.display_name == "Whole flow model"]
    assert len(published) == 1
    assert published[0].training_job == job and list(published[0].trigger_words) == [TRIGGER]
