"""The command line: a kohya folder in, LoRA files, previews and contact sheets out."""

from __future__ import annotations

import json

from services.trainer.engine.cli import build_parser, config_from_args, main


def test_cli_trains_a_kohya_folder_and_draws_contact_sheets(tmp_path, model_store, capsys, make_image) -> None:
    images = tmp_path / "img" / "2_mytrigger"
    images.mkdir(parents=True)
    for index in range(2):
        make_image(64, 64, index).save(images / f"{index}.png")
        (images / f"{index}.txt").write_text(f"mytrigger, colour{index}")
    output = tmp_path / "out"
    code = main(["--models-dir", str(model_store.root), "train", "--folder", str(tmp_path / "img"),
                 "--output", str(output), "--base-model", "tiny-sd15", "--epochs", "2", "--network-dim", "4",
                 "--min-bucket-reso", "64", "--lr-scheduler", "constant", "--optimizer", "AdamW",
                 "--preview-count", "2", "--preview-steps", "2", "--preview-prompt", "mytrigger, colour0",
                 "--seed", "5"])
    assert code == 0
    out = capsys.readouterr().out
    assert "total steps: 8 (4 per epoch x 2 epochs)" in out
    for epoch in (1, 2):
        assert (output / f"epochs/{epoch}/lora.safetensors").is_file()
        assert (output / f"epochs/{epoch}/contact_sheet.png").is_file()
        assert len(list((output / f"epochs/{epoch}/previews").glob("*.png"))) == 2
    assert (output / "contact_sheet.png").is_file()
    record = json.loads((output / "config.json").read_text())
    assert record["config"]["network_dim"] == 4 and record["seed"] == 5
    assert record["config"]["preview"]["prompt"] == "mytrigger, colour0"


def test_cli_reports_every_problem_and_trains_nothing(tmp_path, model_store, capsys, make_image) -> None:
    images = tmp_path / "img" / "1_x"
    images.mkdir(parents=True)
    make_image(64, 64, 0).save(images / "0.png")
    code = main(["--models-dir", str(model_store.root), "train", "--folder", str(tmp_path / "img"),
                 "--output", str(tmp_path / "out"), "--base-model", "tiny-sd15", "--network-dim", "0",
                 "--noise-offset", "-1", "--preview-sampler", "nope"])
    assert code == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err and "network_dim" in err and "noise_offset" in err and "preview.sampler" in err
    assert not (tmp_path / "out").exists()


def test_cli_lists_models_and_presets(model_store, capsys) -> None:
    assert main(["--models-dir", str(model_store.root), "models"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-sd15" in listing and "ready" in listing and "not imported" in listing
    assert main(["presets"]) == 0
    assert "anime-character-sdxl" in capsys.readouterr().out


def test_cli_flags_keep_text_as_written_and_parse_the_rest() -> None:
    args = build_parser().parse_args([
        "train", "--folder", "x", "--output", "y", "--output-name", "2024", "--preview-prompt", "42",
        "--network-dim", "16", "--shuffle-caption", "true", "--optimizer-args", '{"weight_decay": 0.1}',
        "--mixed-precision", "bf16",
    ])
    config = config_from_args(args)
    assert config.output_name == "2024" and config.preview.prompt == "42"
    assert config.network_dim == 16 and config.shuffle_caption is True
    assert config.optimizer_args == {"weight_decay": 0.1} and config.mixed_precision == "bf16"
