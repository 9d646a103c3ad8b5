"""The `kiln` command line as a subprocess against a real gateway: JSON for scripts, progress for
people, and errors that name what to fix with a non-zero status and no traceback."""

from __future__ import annotations

import json

from tests.sdk.conftest import photo_folder


def assert_clean_failure(done, *expected: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    for text in expected:
        assert text in done.stderr, done.stderr


def test_datasets_are_created_and_listed_as_json(cli):
    created = cli.json("datasets", "create", "cats", "--family", "sdxl", "--repeat", "2")
    assert created["name"].startswith("datasets/") and created["family"] == "MODEL_FAMILY_SDXL"
    assert created["defaultRepeat"] == 2
    listed = cli.json("datasets", "list")
    assert created["name"] in [d["name"] for d in listed["datasets"]]
    # --json before the command works as well as after it.
    assert cli("--json", "datasets", "get", created["name"].split("/")[1]).stdout == cli(
        "datasets", "get", created["name"], "--json").stdout
    shown = cli("datasets", "get", created["name"])
    assert shown.returncode == 0 and shown.stdout.startswith(f"{created['name']}  'cats'  sdxl  0 images")


def test_images_upload_a_folder_with_progress_and_skip_it_the_second_time(cli, tmp_path):
    dataset = cli.json("datasets", "create", "uploads")["name"]
    folder = photo_folder(tmp_path / "photos", 3)
    first = cli("images", "upload", dataset, folder)
    assert first.returncode == 0, first.stderr
    assert "upload photos" in first.stderr and "100%" in first.stderr
    assert "uploaded 3 image(s)" in first.stdout and "photo0.png" in first.stdout
    again = cli.json("images", "upload", dataset, folder)
    assert again["images"] == [] and again["dataset"]["trainingImageCount"] == 3
    listed = cli.json("images", "list", dataset)["images"]
    assert sorted(i["filename"] for i in listed) == ["photo0.png", "photo1.png", "photo2.png"]
    assert all(i["tags"][0] == "mytrigger" for i in listed)

    added = cli.json("tags", "add", dataset, "kilnsample", "--head")
    assert added["changedCount"] == 3
    stats = cli.json("tags", "stats", dataset)
    assert {"tag": "kilnsample", "count": 3} in stats["tags"]
    cropped = cli.json("images", "crop", dataset, "--mode", "center")
    assert cropped["done"] == cropped["total"] == 3

    (folder / "readme.md").write_text("not an image")
    refused = cli("images", "upload", dataset, folder)
    assert_clean_failure(refused, "INVALID_ARGUMENT", f"{folder / 'readme.md'}: not a PNG or JPEG file")
    missing = tmp_path / "missing.png"
    assert_clean_failure(cli("images", "upload", dataset, missing), f"{missing}: no such file")


def test_a_job_config_file_is_validated_with_its_estimate_and_nothing_queued(cli, tmp_path):
    dataset = cli.json("datasets", "create", "config")["name"]
    assert cli("images", "upload", dataset, photo_folder(tmp_path / "photos", 2), "--quiet").returncode == 0
    config = tmp_path / "lora.toml"
    config.write_text('base_model = "baseModels/tiny-sd15"\nepochs = 3\nrepeat = 1\nnetwork_dim = 4\n'
                      'seed = 7\n\n[preview]\nprompt = "mytrigger, pose1"\ncount = 1\n')
    checked = cli("jobs", "create", dataset, "--preset", "demo-tiny-sd15", "--config", config, "--validate-only")
    assert checked.returncode == 0, checked.stderr
    assert "valid; nothing was queued" in checked.stdout and "x 3 epochs" in checked.stdout
    job = cli.json("jobs", "create", dataset, "--preset", "demo-tiny-sd15", "--config", config, "--validate-only")
    assert job["config"]["epochs"] == 3 and job["config"]["networkDim"] == 4
    assert job["estimate"]["trainingImages"] == 2 and int(job["estimate"]["totalSteps"]) > 0
    assert cli.json("jobs", "list") == {"trainingJobs": []}

    # The same as JSON.
    as_json = tmp_path / "lora.json"
    as_json.write_text(json.dumps({"epochs": 1, "network_dim": 4}))
    assert cli.json("jobs", "create", dataset, "--preset", "demo-tiny-sd15", "--config", as_json,
                    "--validate-only")["config"]["epochs"] == 1


def test_an_invalid_config_fails_with_its_violations_and_no_traceback(cli, tmp_path):
    dataset = cli.json("datasets", "create", "invalid")["name"]
    assert cli("images", "upload", dataset, photo_folder(tmp_path / "photos", 1), "--quiet").returncode == 0
    config = tmp_path / "bad.toml"
    config.write_text("network_dim = 0\nunet_lr = -1.0\n")
    refused = cli("jobs", "create", dataset, "--preset", "demo-tiny-sd15", "--config", config)
    assert_clean_failure(refused, "INVALID_ARGUMENT", "  - training_job.config.network_dim: ",
                         "  - training_job.config.unet_lr: ", "How to fix: fix the fields listed")
    as_json = cli("jobs", "create", dataset, "--preset", "demo-tiny-sd15", "--config", config, "--json")
    assert as_json.returncode != 0 and as_json.stdout == ""
    error = json.loads(as_json.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert "training_job.config.network_dim" in [v["field"] for v in error["violations"]]

    config.write_text("epochz = 3\n")
    unknown = cli("jobs", "create", dataset, "--config", config, "--validate-only")
    assert_clean_failure(unknown, f"{config} does not fit TrainingConfig", "epochz")
    config.write_text("epochs = \n")
    broken = cli("jobs", "create", dataset, "--config", config, "--validate-only")
    assert_clean_failure(broken, f"{config} is not valid TOML")


def test_without_a_key_the_cli_says_where_to_put_one(cli):
    refused = cli("datasets", "list", KILN_API_KEY="")
    assert_clean_failure(refused, "UNAUTHENTICATED", "--api-key", "KILN_API_KEY")
    wrong = cli("datasets", "list", "--api-key", "kiln_0123456789ab_" + "x" * 32)
    assert_clean_failure(wrong, "UNAUTHENTICATED", "a valid API key is required")
    missing = cli("jobs", "get", "0123456789abcdef")
    assert_clean_failure(missing, "NOT_FOUND", "trainingJobs/0123456789abcdef")


def test_keys_are_made_by_the_operator_command_on_the_gateways_database(cli, gateway_dir):
    created = cli("keys", "create", "--tenant", "cli-keys", "--name", "from kiln", "--json",
                  KILN_DATA_DIR=str(gateway_dir), KILN_JSON_LOGS="false")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["secret_key"]
    assert cli("datasets", "list", "--json", KILN_API_KEY=key).returncode == 0
    listed = cli("--json", "keys", "list", "--tenant", "cli-keys", KILN_DATA_DIR=str(gateway_dir),
                 KILN_JSON_LOGS="false")
    assert [k["name"] for k in json.loads(listed.stdout)] == ["from kiln"]
