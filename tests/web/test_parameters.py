"""The parameters step and retraining: per-image repeat, basic mode's live estimate (images x
repeat x epochs steps), violations on their fields before submitting, pro mode's every
parameter with its default, a submitted job with the values shown, a retrain prefilled from a job
with what changed, both languages and the accessibility check."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from kiln import Client
from kiln.v1 import trainer_pb2 as tpb
from tests.web.browser import accessibility_violations, screenshot
from tests.web.samples import dataset_of_samples

# The preset the page picks on a stack with only the built-in models installed.
DEMO = "presets/demo-tiny-sd15"


@pytest.fixture(scope="module")
def dataset(api: Client) -> str:
    """Two tagged sample photos with a trigger word at the head (the demo preset keeps 1 token)."""
    return dataset_of_samples(api, "web parameters", ("astronaut.png", "chelsea.png"), head_tag="kilnperson")


@pytest.fixture
def jobs_made(api: Client) -> Iterator[list[str]]:
    """Jobs a test queued, cancelled afterwards so that they don't hold the stack's one worker."""
    made: list[str] = []
    yield made
    for name in made:
        job = api.get_job(name)
        if job.state in (tpb.TrainingJob.STATE_QUEUED, tpb.TrainingJob.STATE_RUNNING):
            api.trainer.CancelTrainingJob(tpb.CancelTrainingJobRequest(name=name))


def _open(page: Page, dataset: str, query: str = "") -> None:
    page.goto(f"/#/datasets/{dataset.removeprefix('datasets/')}/train{query}")
    expect(page.get_by_test_id("parameters-form")).to_be_visible()


def _demo_preset(api: Client) -> tpb.Preset:
    return api.trainer.GetPreset(tpb.GetPresetRequest(name=DEMO))


def test_the_basic_estimate_follows_the_step_formula_as_epochs_change(page: Page, api: Client, dataset: str):
    preset = _demo_preset(api)
    _open(page, dataset)
    expect(page.get_by_label("Model theme")).to_have_value(DEMO)
    expect(page.get_by_label("Repeat", exact=True)).to_have_value(str(preset.config.repeat))
    steps = page.get_by_test_id("formula-steps")
    images = 2
    expect(steps).to_have_text(str(images * preset.config.repeat * preset.config.epochs))

    page.get_by_label("Epoch", exact=True).fill("5")
    expect(steps).to_have_text(str(images * preset.config.repeat * 5))
    page.get_by_label("Repeat", exact=True).fill("3")
    expect(steps).to_have_text(str(images * 3 * 5))
    # The API's own answer for the same request agrees with what the page shows.
    answer = api.create_job(dataset, "demo-tiny-sd15", epochs=5, repeat=3, validate_only=True)
    assert answer.estimate.formula_steps == images * 3 * 5
    expect(page.get_by_test_id("cost")).to_contain_text("GPU time")
    expect(page.get_by_test_id("queue-position")).to_contain_text("about")

    # One image's own repeat counts for that image only: (4 + 3) x 5.
    page.get_by_label("Repeat of astronaut.png").fill("4")
    page.get_by_label("Repeat of astronaut.png").press("Tab")
    expect(steps).to_have_text(str((4 + 3) * 5))
    astronaut = next(i for i in api.list_images(dataset) if i.filename == "astronaut.png")
    assert astronaut.repeat == 4
    api.set_repeat(astronaut.name, 0)


def test_violations_are_shown_on_their_fields_before_submitting(page: Page, api: Client, dataset: str):
    _open(page, dataset)
    expect(page.get_by_test_id("formula-steps")).to_be_visible()
    epochs = page.get_by_label("Epoch", exact=True)
    epochs.fill("0")
    expect(epochs).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#param-epochs-errors")).to_contain_text("at least 1")
    expect(page.get_by_test_id("estimate-invalid")).to_be_visible()
    epochs.fill("2")
    expect(epochs).to_have_attribute("aria-invalid", "false")

    page.get_by_label("Pro mode").check()
    unet = page.get_by_label("UNet learning rate", exact=True)
    unet.fill("-0.5")
    expect(unet).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#param-unet_lr-errors")).to_contain_text("negative")
    before = len(list(api.trainer.ListTrainingJobs(tpb.ListTrainingJobsRequest(page_size=100)).training_jobs))
    page.get_by_role("button", name="Start training").click()
    expect(unet).to_be_focused()
    assert len(api.trainer.ListTrainingJobs(tpb.ListTrainingJobsRequest(page_size=100)).training_jobs) == before


def test_pro_mode_shows_every_parameter_with_its_default(page: Page, api: Client, dataset: str):
    preset = _demo_preset(api)
    _open(page, dataset)
    page.get_by_label("Pro mode").check()
    expect(page.get_by_label("UNet learning rate", exact=True)).to_have_value(f"{preset.config.unet_lr:g}")
    expect(page.get_by_label("Text encoder learning rate", exact=True)).to_have_value(
        f"{preset.config.text_encoder_lr:g}")
    expect(page.get_by_label("Network dim", exact=True)).to_have_value(str(preset.config.network_dim))
    expect(page.get_by_label("Learning rate scheduler", exact=True)).to_have_value(preset.config.lr_scheduler)
    expect(page.get_by_label("Optimizer", exact=True)).to_have_value(preset.config.optimizer)
    expect(page.get_by_label("Shuffle tags", exact=True)).to_be_checked(checked=preset.config.shuffle_caption)
    expect(page.get_by_label("Keep N tokens", exact=True)).to_have_value(str(preset.config.keep_tokens))
    expect(page.get_by_label("Noise offset", exact=True)).to_have_value(f"{preset.config.noise_offset:g}")
    for label in ("Network alpha", "Multires noise discount", "Multires noise iterations", "Conv dim",
                  "Conv alpha", "Seed", "Preview sampler"):
        expect(page.get_by_label(label, exact=True)).to_be_visible()
    # Each has a short explanation of what it does beside it.
    expect(page.locator("#param-noise_offset-help")).to_contain_text("below 0.2")
    # Every field of the API's configuration has its input (the base model has its own, above).
    every = [f.name for f in tpb.TrainingConfig.DESCRIPTOR.fields if f.name not in ("base_model", "preview")]
    every += [f"preview.{f.name}" for f in tpb.PreviewConfig.DESCRIPTOR.fields]
    shown = page.get_by_test_id("parameter").evaluate_all("nodes => nodes.map(n => n.dataset.field)")
    assert sorted(shown) == sorted(every)


def test_a_submitted_job_has_the_values_shown_and_opens_its_page(page: Page, api: Client, dataset: str,
                                                                jobs_made: list[str]):
    _open(page, dataset)
    page.get_by_label("Epoch", exact=True).fill("3")
    page.get_by_label("Preview prompt").fill("kilnperson, smiling")
    page.get_by_label("Pro mode").check()
    page.get_by_label("Network dim", exact=True).fill("4")
    page.get_by_label("Job name").fill("from the browser")
    expect(page.get_by_test_id("formula-steps")).to_have_text(str(2 * 2 * 3))
    screenshot(page, "parameters")
    page.get_by_role("button", name="Start training").click()
    expect(page).to_have_url(re.compile(r"#/jobs/[^/]+/progress$"))
    job_id = re.search(r"#/jobs/([^/]+)/progress", page.url)
    assert job_id is not None
    jobs_made.append(f"trainingJobs/{job_id.group(1)}")
    job = api.get_job(jobs_made[0])
    assert job.display_name == "from the browser"
    assert job.preset == DEMO
    assert (job.config.epochs, job.config.network_dim, job.config.preview.prompt) == (3, 4, "kilnperson, smiling")
    assert job.dataset == dataset


def test_retrain_opens_the_old_parameters_and_shows_what_changed(page: Page, api: Client, dataset: str,
                                                               jobs_made: list[str]):
    original = api.create_job(dataset, "demo-tiny-sd15", epochs=2, display_name="first try")
    jobs_made.append(original.name)
    _open(page, dataset, f"?from={original.name}")
    expect(page.get_by_test_id("retrain-from")).to_contain_text("first try")
    epochs = page.get_by_label("Epoch", exact=True)
    expect(epochs).to_have_value("2")
    changes = page.get_by_test_id("retrain-changes")
    expect(changes).to_contain_text("Nothing changed yet")

    epochs.fill("3")
    page.get_by_label("Pro mode").check()
    page.get_by_label("UNet learning rate", exact=True).fill("0.0005")
    expect(changes.get_by_test_id("change")).to_have_text(["Epoch: 2 → 3", "UNet learning rate: 0.001 → 0.0005"])
    expect(page.get_by_test_id("formula-steps")).to_have_text(str(2 * 2 * 3))
    assert accessibility_violations(page) == []
    page.get_by_role("button", name="Retrain").click()
    expect(page).to_have_url(re.compile(r"#/jobs/[^/]+/progress$"))
    job_id = re.search(r"#/jobs/([^/]+)/progress", page.url)
    assert job_id is not None
    retrained = api.get_job(f"trainingJobs/{job_id.group(1)}")
    jobs_made.append(retrained.name)
    assert retrained.retrained_from == original.name
    assert retrained.snapshot == original.snapshot
    assert (retrained.config.epochs, retrained.config.unet_lr) == (3, 0.0005)
    # What wasn't changed is the old job's, its drawn seed included.
    assert (retrained.config.network_dim, retrained.seed) == (original.config.network_dim, original.seed)


def test_the_parameters_page_in_chinese_and_the_accessibility_check(page: Page, dataset: str):
    _open(page, dataset)
    expect(page.get_by_test_id("formula-steps")).to_be_visible()
    assert accessibility_violations(page) == []
    page.get_by_label("Pro mode").check()
    assert accessibility_violations(page) == []
    page.get_by_label("Language").select_option("zh")
    for label in ("文本编码器学习率", "Unet学习率", "学习率调度器", "优化器", "训练网格大小 Dim", "训练网络Alpha值",
                  "打乱标签", "保持第N个token", "噪声偏移", "多分辨率噪声衰减率", "多分辨率噪声迭代次数", "卷积层维度",
                  "卷积层Alpha值"):
        expect(page.get_by_label(label, exact=True)).to_be_visible()
    expect(page.get_by_test_id("estimate")).to_contain_text("总步数")
    assert accessibility_violations(page) == []
