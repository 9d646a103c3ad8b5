"""The training page: the queue position while a job waits; its live loss chart,
progress and previews per epoch; sample now, save now and cancel; and the stream resuming after a
reload or a lost network, with every event applied exactly once (the page's count and last seq
against the job's own event log)."""

from __future__ import annotations

import json

from playwright.sync_api import BrowserContext, Locator, Page, Request, expect

from kiln import Client
from kiln.v1 import trainer_pb2 as tpb
from tests.web.browser import accessibility_violations, screenshot
from tests.web.training_jobs import (
    FAST_EPOCHS,
    PREVIEWS_PER_EPOCH,
    events_of,
    finished_job,
    job_path,
    start_fast_job,
    start_slow_job,
)

State = tpb.TrainingJob.State


def wait_until_running(api: Client, job: str) -> None:
    for event in api.watch_job(job):
        if event.HasField("started") or event.HasField("finished"):
            break
    assert api.get_job(job).state == State.STATE_RUNNING


def counter(page: Page) -> Locator:
    return page.get_by_test_id("events-seen")


def seen(page: Page) -> int:
    return int(counter(page).get_attribute("data-count") or "0")


def points(page: Page) -> int:
    return int(page.get_by_test_id("loss-chart").get_attribute("data-points") or "0")


def expect_more_events_than(page: Page, count: int) -> None:
    page.wait_for_function(
        "n => Number(document.querySelector('[data-testid=events-seen]')?.dataset.count ?? 0) > n", arg=count)


def watch_requests(page: Page) -> list[int]:
    """The `after_seq` of each WatchTrainingJob the page opens from now on, in order."""
    seqs: list[int] = []

    def opened(request: Request) -> None:
        if request.url.endswith("/kiln.v1.TrainerService/WatchTrainingJob"):
            body = request.post_data_buffer or b""
            # A Connect stream's request: one envelope (a flag byte, a 4-byte length) around the JSON.
            seqs.append(int(json.loads(body[5:]).get("afterSeq", 0)))

    page.on("request", opened)
    return seqs


def expect_every_event_once(page: Page, api: Client, job: str) -> list[tpb.TrainingEvent]:
    """The page applied each of the job's events exactly once: as many as the job has, up to its
    last seq, and its log lines are the job's log events, in order."""
    events = events_of(api, job)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    expect(counter(page)).to_have_attribute("data-last-seq", str(events[-1].seq))
    expect(counter(page)).to_have_attribute("data-count", str(len(events)))
    logged = [e.log.message for e in events if e.HasField("log")]
    assert page.get_by_test_id("log-line").locator(".message").all_inner_texts() == logged
    return events


def test_a_waiting_job_shows_its_place_and_a_running_one_resumes_after_reload_and_offline(
        page: Page, context: BrowserContext, api: Client):
    running = start_slow_job(api)
    wait_until_running(api, running.name)
    waiting = start_slow_job(api)
    place = api.get_job(waiting.name).queue_position
    assert place >= 1

    # The job behind it: its place in the queue, and cancelled while it waits.
    page.goto(job_path(waiting, "progress"))
    expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "QUEUED")
    expect(page.get_by_test_id("queue-position")).to_contain_text(f"{place} in line")
    page.get_by_role("button", name="Cancel training").click()
    page.get_by_test_id("confirm-dialog").get_by_role("button", name="Cancel training").click()
    expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "CANCELLED")
    assert api.get_job(waiting.name).state == State.STATE_CANCELLED

    # The running one: the chart fills, and a reload carries on from the last event seen.
    page.goto(job_path(running, "progress"))
    expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "RUNNING")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-connection", "live")
    page.wait_for_function("() => Number(document.querySelector('[data-testid=loss-chart]')?.dataset.points) >= 3")
    expect(page.get_by_test_id("learning-rate").first).to_be_visible()
    expect(page.get_by_test_id("speed")).to_be_visible()
    before_reload = seen(page)
    charted = points(page)
    watches = watch_requests(page)
    page.reload()
    expect(page.get_by_test_id("connection")).to_have_attribute("data-connection", "live")
    # It asked for the events after the last one it had applied, not for the whole log again.
    assert watches[0] >= before_reload > 0
    assert points(page) >= charted  # the chart rebuilt from the job's metrics before going on
    expect_more_events_than(page, before_reload)

    # Offline, then back: the stream picks up after the last event it applied.
    context.set_offline(True)
    expect(page.get_by_test_id("connection")).to_have_attribute("data-connection", "offline")
    expect(page.get_by_test_id("announcement")).to_have_text("Connection lost; reconnecting…")
    while_offline = seen(page)
    watches.clear()
    context.set_offline(False)
    expect(page.get_by_test_id("connection")).to_have_attribute("data-connection", "live")
    assert watches[0] == while_offline
    expect_more_events_than(page, while_offline)

    # Sample now and save now, each answered by the running job; then cancel it.
    page.get_by_role("button", name="Sample now").click()
    sample = page.get_by_test_id("sample-row")
    expect(sample).to_have_count(1)
    expect(sample.get_by_test_id("preview")).to_have_count(1)
    page.get_by_role("button", name="Save now").click()
    expect(page.get_by_test_id("saved-on-request")).to_have_count(1)
    assert accessibility_violations(page) == []  # running: stats, chart, rows of previews, log
    page.get_by_role("button", name="Cancel training").click()
    page.get_by_test_id("confirm-dialog").get_by_role("button", name="Cancel training").click()
    expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "CANCELLED")
    expect(page.get_by_test_id("announcement")).to_have_text("Training cancelled.")

    events = expect_every_event_once(page, api, running.name)
    expect(page.get_by_test_id("log-line").last).to_contain_text("cancellation requested")
    job = api.get_job(running.name)
    assert job.state == State.STATE_CANCELLED
    assert any(e.on_request for e in job.epochs)
    assert sum(e.HasField("previews_rendered") for e in events) == 1
    metrics = api.trainer.ListTrainingMetrics(tpb.ListTrainingMetricsRequest(name=running.name, page_size=10000))
    assert points(page) == len(metrics.metrics)


def test_a_job_streams_its_loss_and_each_epochs_previews_live(page: Page, api: Client):
    # Opened while the job still waits behind another, so all it shows arrives through the stream.
    blocker = start_slow_job(api)
    wait_until_running(api, blocker.name)
    job = start_fast_job(api)
    page.goto(job_path(job, "progress"))
    expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "QUEUED")
    expect(page.get_by_test_id("queue-position")).to_contain_text("in line")
    expect(page.get_by_test_id("no-epochs")).to_be_visible()
    assert accessibility_violations(page) == []
    api.trainer.CancelTrainingJob(tpb.CancelTrainingJobRequest(name=blocker.name))

    expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "RUNNING")
    rows = page.get_by_test_id("epoch-row")
    expect(rows.first.get_by_test_id("preview")).to_have_count(PREVIEWS_PER_EPOCH)
    expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "SUCCEEDED")
    expect(page.get_by_test_id("announcement")).to_have_text("Training finished.")
    expect(rows).to_have_count(FAST_EPOCHS)
    for row in rows.all():
        expect(row.get_by_test_id("preview")).to_have_count(PREVIEWS_PER_EPOCH)
    events = expect_every_event_once(page, api, job.name)
    steps = {e.progress.step for e in events if e.HasField("progress") and e.progress.phase == "training"}
    expect(page.get_by_test_id("loss-chart")).to_have_attribute("data-points", str(len(steps)))
    finished = api.get_job(job.name)
    assert [r.epoch for r in finished.epochs] == list(range(1, FAST_EPOCHS + 1))
    screenshot(page, "training")


def test_a_finished_job_reads_whole_in_both_languages_and_passes_the_accessibility_check(page: Page, api: Client):
    job = finished_job(api)
    page.goto(job_path(job, "progress"))
    expect(page.get_by_test_id("job-state")).to_have_text("Finished")
    expect(page.get_by_test_id("epoch-row")).to_have_count(FAST_EPOCHS)
    expect(page.get_by_test_id("connection")).to_have_attribute("data-connection", "ended")
    assert points(page) > 0
    # A preview opens full size (through the presigned URL the page asks for).
    with page.expect_popup() as opened:
        page.get_by_test_id("epoch-row").first.get_by_test_id("preview").first.get_by_role("link").click()
    assert "/epochs/1/previews/" in opened.value.url
    opened.value.close()
    assert accessibility_violations(page) == []
    page.get_by_label("Language").select_option("zh")
    expect(page.get_by_role("heading", name="训练过程")).to_be_visible()
    expect(page.get_by_test_id("job-state")).to_have_text("训练完成")
    expect(page.get_by_role("button", name="取消训练")).to_be_disabled()
    assert accessibility_violations(page) == []
