"""The workbench's start: signing in, the datasets list, creating and deleting a dataset, both
languages, and the accessibility check."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from kiln import Client
from kiln.v1 import dataset_pb2 as dpb
from services.stack import Stack
from tests.web.browser import accessibility_violations, screenshot


def test_the_printed_link_signs_in_and_leaves_no_key_in_the_address(page: Page, web_stack: Stack):
    expect(page.get_by_role("heading", name="Datasets", level=1)).to_be_visible()
    assert web_stack.api_key not in page.url
    assert page.evaluate("() => localStorage.getItem('kiln.apiKey')") == web_stack.api_key


def test_a_wrong_key_is_refused_with_what_to_do(context, web_stack: Stack):
    page = context.new_page()
    page.goto("/")
    page.get_by_label("API key").fill(web_stack.api_key + "x")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("refusal")).to_contain_text("API key")


def test_a_dataset_is_created_listed_and_deleted(page: Page, api: Client):
    page.get_by_label("Name", exact=True).fill("Web cats")
    page.get_by_label("Description").fill("made in the browser")
    page.get_by_label("SDXL").check()
    page.get_by_role("button", name="Create dataset").click()
    expect(page.get_by_test_id("dataset-title")).to_have_text("Web cats")
    dataset_id = re.search(r"#/datasets/([^/]+)/images", page.url)
    assert dataset_id is not None
    stored = api.datasets.GetDataset(dpb.GetDatasetRequest(name=f"datasets/{dataset_id.group(1)}"))
    assert (stored.display_name, stored.description, stored.family) == (
        "Web cats", "made in the browser", dpb.MODEL_FAMILY_SDXL)

    page.get_by_role("link", name="Datasets").first.click()
    row = page.get_by_test_id("dataset-row").filter(has_text="Web cats")
    expect(row).to_contain_text("SDXL")
    screenshot(page, "datasets")
    row.get_by_role("button", name="Delete Web cats").click()
    page.get_by_test_id("confirm-dialog").get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    names = [d.name for d in api.datasets.ListDatasets(dpb.ListDatasetsRequest(page_size=100)).datasets]
    assert f"datasets/{dataset_id.group(1)}" not in names


def test_a_refused_name_is_shown_on_its_field(page: Page):
    page.get_by_label("Name", exact=True).fill("   ")
    page.get_by_role("button", name="Create dataset").click()
    field = page.get_by_label("Name", exact=True)
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#dataset-name-errors li")).to_have_count(1)
    # A shown refusal keeps the page accessible (the live region around its list).
    assert accessibility_violations(page) == []


def test_a_malformed_address_still_opens_the_datasets_page(page: Page):
    # A cut-off or mistyped link: an escape that can't be decoded, in the path and in the query.
    page.goto("/#/datasets/%E0/images?from=%")
    page.reload()
    expect(page.get_by_role("heading", name="Datasets", level=1)).to_be_visible()
    expect(page.get_by_role("button", name="Create dataset")).to_be_visible()


def test_the_page_switches_to_chinese_and_back(page: Page):
    page.get_by_label("Language").select_option("zh")
    expect(page.get_by_role("heading", name="数据集", level=1)).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    screenshot(page, "datasets-zh")
    page.reload()
    expect(page.get_by_role("button", name="新建数据集")).to_be_visible()
    page.get_by_label("语言").select_option("en")
    expect(page.get_by_role("button", name="Create dataset")).to_be_visible()


def test_the_datasets_page_passes_the_accessibility_check(page: Page, api: Client):
    api.datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(display_name="a11y",
                                                                            family=dpb.MODEL_FAMILY_SD15)))
    page.reload()
    expect(page.get_by_test_id("dataset-row").first).to_be_visible()
    assert accessibility_violations(page) == []
    page.get_by_label("Language").select_option("zh")
    assert accessibility_violations(page) == []
