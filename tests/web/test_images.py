"""The images step: uploads from the picker and by drag and drop, straight to
the object store with per-file progress; refusals with the API's reason; the regularization set;
deleting one image and several; the accessibility check."""

from __future__ import annotations

import base64
import pathlib

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from kiln import Client
from kiln.v1 import dataset_pb2 as dpb
from services.common.bundled_data import samples_dir
from tests.web.browser import accessibility_violations, screenshot


@pytest.fixture(scope="module")
def samples() -> pathlib.Path:
    return samples_dir()


def open_images(page: Page, api: Client, name: str) -> str:
    """A new SD1.5 dataset, its images step open in the page; returns the dataset's name."""
    dataset = api.create_dataset(name, family="sd15").name
    page.goto(f"/#/datasets/{dataset.removeprefix('datasets/')}/images")
    expect(page.get_by_test_id("dataset-title")).to_have_text(name)
    return dataset


def expect_uploaded(page: Page, filenames: list[str]) -> None:
    """Each file's row reached its end with a full progress bar, and its thumbnail has loaded."""
    for filename in filenames:
        row = page.get_by_test_id("upload").filter(has_text=filename)
        expect(row).to_have_attribute("data-stage", "done")
        expect(row.get_by_role("progressbar", name=f"Upload of {filename}")).to_have_attribute("value", "1")
        expect(page.get_by_role("img", name=f"Thumbnail of {filename}")).to_be_visible()
    page.wait_for_function(
        """(count) => [...document.querySelectorAll('[data-testid=thumbnail]')]
             .filter((img) => img.complete && img.naturalWidth > 0).length === count""", arg=len(filenames))


def image_count(api: Client, dataset: str, role: int = dpb.IMAGE_ROLE_TRAINING) -> int:
    return len(list(api.list_images(dataset, role=role)))


def transparent_png(path: pathlib.Path) -> pathlib.Path:
    """A PNG with a transparent half, which the service composites on white and warns about."""
    picture = Image.new("RGBA", (320, 240), (200, 80, 40, 255))
    picture.paste((0, 0, 0, 0), (0, 0, 160, 240))
    picture.save(path)
    return path


def test_files_chosen_in_the_picker_upload_with_progress_and_thumbnails(page: Page, api: Client,
                                                                        samples: pathlib.Path, tmp_path: pathlib.Path):
    dataset = open_images(page, api, "Picked")
    expect(page.get_by_test_id("image-limit")).to_have_text("0 of 1,000 images; 1,000 more can be added.")
    chosen = ["astronaut.png", "chelsea.png", "rocket.jpg", "sticker.png"]
    paths = [samples / f for f in chosen[:3]] + [transparent_png(tmp_path / "sticker.png")]
    # The most rows ever travelling at once, and whether a file ever waited for a free lane.
    page.evaluate("""() => {
        window.uploadLanes = { most: 0, waited: false };
        new MutationObserver(() => {
          const stages = [...document.querySelectorAll('[data-testid=upload]')].map((row) => row.dataset.stage);
          const travelling = stages.filter((stage) => stage === 'sending' || stage === 'filing').length;
          window.uploadLanes.most = Math.max(window.uploadLanes.most, travelling);
          window.uploadLanes.waited ||= stages.includes('queued');
        }).observe(document.body, { subtree: true, childList: true, attributes: true });
      }""")
    page.get_by_test_id("file-input").set_input_files([str(p) for p in paths])

    expect_uploaded(page, chosen)
    assert page.evaluate("() => window.uploadLanes") == {"most": 3, "waited": True}
    expect(page.get_by_test_id("upload-summary")).to_have_text("4 of 4 uploaded, 0 refused.")
    expect(page.get_by_test_id("image-card")).to_have_count(4)
    expect(page.get_by_test_id("image-limit")).to_have_text("4 of 1,000 images; 996 more can be added.")
    expect(page.get_by_test_id("role-training")).to_have_text("Training set (4)")
    # The transparent picture was composited on white, and the page says so.
    expect(page.get_by_test_id("image-card").filter(has_text="sticker.png").get_by_test_id("image-warnings")) \
        .to_contain_text("transparent areas composited on white")
    stored = sorted(image.filename for image in api.list_images(dataset))
    assert stored == sorted(chosen)
    assert api.get_dataset(dataset).training_image_count == 4
    screenshot(page, "images")


def test_files_dropped_on_the_page_upload(page: Page, api: Client, samples: pathlib.Path):
    dataset = open_images(page, api, "Dropped")
    dropped = ["coffee.png", "motorcycle_left.png"]
    files = [{"name": f, "type": "image/png", "data": base64.b64encode((samples / f).read_bytes()).decode()}
             for f in dropped]
    # What a drop from the desktop delivers: a DataTransfer holding the files, on dragenter, dragover and drop.
    page.evaluate(
        """(files) => {
             const transfer = new DataTransfer();
             for (const file of files) {
               const bytes = Uint8Array.from(atob(file.data), (c) => c.charCodeAt(0));
               transfer.items.add(new File([bytes], file.name, { type: file.type }));
             }
             const zone = document.querySelector('[data-testid=drop-zone]');
             for (const type of ['dragenter', 'dragover', 'drop']) {
               zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
             }
           }""", files)
    expect_uploaded(page, dropped)
    assert sorted(image.filename for image in api.list_images(dataset)) == dropped


def test_refused_files_are_listed_with_the_apis_reason(page: Page, api: Client, samples: pathlib.Path,
                                                       tmp_path: pathlib.Path):
    dataset = open_images(page, api, "Refusals")
    api.upload_file(dataset, samples / "astronaut.png")
    page.reload()
    expect(page.get_by_test_id("image-card")).to_have_count(1)
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not a picture\n" * 20)
    duplicate = tmp_path / "astronaut-again.png"
    duplicate.write_bytes((samples / "astronaut.png").read_bytes())
    page.get_by_test_id("file-input").set_input_files([str(fake), str(duplicate), str(samples / "coffee.png")])

    refused_fake = page.get_by_test_id("upload").filter(has_text="notes.png")
    expect(refused_fake).to_have_attribute("data-stage", "refused")
    expect(refused_fake.get_by_test_id("upload-reason")).to_contain_text("not PNG or JPEG")
    refused_duplicate = page.get_by_test_id("upload").filter(has_text="astronaut-again.png")
    expect(refused_duplicate).to_have_attribute("data-stage", "refused")
    expect(refused_duplicate.get_by_test_id("upload-reason")).to_contain_text(
        "this image is already in this dataset")
    expect(page.get_by_test_id("upload").filter(has_text="coffee.png")).to_have_attribute("data-stage", "done")
    expect(page.get_by_test_id("upload-summary")).to_have_text("1 of 3 uploaded, 2 refused.")
    assert sorted(image.filename for image in api.list_images(dataset)) == ["astronaut.png", "coffee.png"]

    # Clearing forgets the finished rows, refused ones included.
    page.get_by_role("button", name="Clear finished").click()
    expect(page.get_by_test_id("upload")).to_have_count(0)


def test_the_regularization_tab_uploads_to_the_regularization_set(page: Page, api: Client, samples: pathlib.Path):
    dataset = open_images(page, api, "Regularized")
    api.upload_file(dataset, samples / "astronaut.png")
    page.reload()
    expect(page.get_by_test_id("role-training")).to_have_text("Training set (1)")
    page.get_by_role("tab", name="Regularization set").click()
    expect(page.get_by_role("tab", name="Regularization set")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_test_id("no-images")).to_be_visible()
    # The picker, from the keyboard: Enter on the button (focused and pressed in one step, so a
    # re-render of the list in between can't take the focus away).
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Choose files…").press("Enter")
    chooser.value.set_files(str(samples / "rocket.jpg"))
    expect_uploaded(page, ["rocket.jpg"])
    expect(page.get_by_test_id("role-regularization")).to_have_text("Regularization set (1)")
    assert [i.filename for i in api.list_images(dataset, role=dpb.IMAGE_ROLE_REGULARIZATION)] == ["rocket.jpg"]
    assert [i.filename for i in api.list_images(dataset, role=dpb.IMAGE_ROLE_TRAINING)] == ["astronaut.png"]
    # The arrow keys move between the sets (the tabs pattern), and the training set is listed again.
    page.get_by_role("tab", name="Regularization set").press("ArrowLeft")
    expect(page.get_by_role("tab", name="Training set")).to_be_focused()
    expect(page.get_by_test_id("image-card")).to_have_count(1)
    expect(page.get_by_test_id("image-card")).to_contain_text("astronaut.png")


def test_images_are_deleted_one_and_many_at_a_time(page: Page, api: Client, samples: pathlib.Path):
    dataset = open_images(page, api, "Deletions")
    for filename in ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]:
        api.upload_file(dataset, samples / filename)
    page.reload()
    expect(page.get_by_test_id("image-card")).to_have_count(4)

    page.get_by_role("button", name="Delete chelsea.png").click()
    page.get_by_test_id("confirm-dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_test_id("image-card")).to_have_count(3)
    assert "chelsea.png" not in [i.filename for i in api.list_images(dataset)]

    page.get_by_label("Select astronaut.png").check()
    page.get_by_label("Select rocket.jpg").check()
    page.get_by_test_id("delete-selected").click()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text("Delete 2 images?")
    page.get_by_test_id("confirm-dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_test_id("image-card")).to_have_count(1)
    expect(page.get_by_test_id("image-card")).to_contain_text("coffee.png")
    expect(page.get_by_test_id("image-limit")).to_have_text("1 of 1,000 images; 999 more can be added.")
    assert [i.filename for i in api.list_images(dataset)] == ["coffee.png"]
    assert api.get_dataset(dataset).training_image_count == 1


def test_the_images_page_passes_the_accessibility_check(page: Page, api: Client, samples: pathlib.Path,
                                                        tmp_path: pathlib.Path):
    dataset = open_images(page, api, "Accessible images")
    api.upload_file(dataset, samples / "camera.png")
    page.reload()
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    page.get_by_test_id("file-input").set_input_files(str(fake))
    expect(page.get_by_test_id("upload-reason")).to_be_visible()
    expect(page.get_by_role("img", name="Thumbnail of camera.png")).to_be_visible()
    assert accessibility_violations(page) == []
    page.get_by_label("Language").select_option("zh")
    expect(page.get_by_role("tab", name="正则化数据集 (0)")).to_be_visible()
    assert accessibility_violations(page) == []
