"""A trained LoRA's metadata holds the keys kohya's train_network.py writes for the same settings,
in its value formats, and no others but three of Kiln's own.

The reference below is what kohya's writer produces: every value is Python's ``str`` of the
setting (``True``, ``None``, ``0.0``), JSON text for the JSON keys, and keys that describe a
setting that is absent (network args, the base model's hashes when it is not a local file) are
left out rather than written as ``None``. The tests at the end check Kiln's files, and this
reference, against the headers of LoRA files kohya itself wrote (tests/trainer/fixtures).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from services.trainer.engine.artifacts import LocalDirectoryWriter
from services.trainer.engine.checkpoint_hashes import hash_checkpoint
from services.trainer.engine.config import TrainingConfig, parse_config
from services.trainer.engine.metadata import tag_frequency
from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.trainer import SAVE_NOW, TrainingRun
from tests.trainer.conftest import FAST, build_dataset

Expectation = str | Callable[[str], bool]

# What Kiln writes beyond kohya: the schedule's shape and the base model's prediction type.
KILN_EXTRAS = {"ss_lr_scheduler_num_cycles", "ss_lr_scheduler_power", "ss_v_parameterization"}


def integer(text: str) -> bool:
    return re.fullmatch(r"\d+", text) is not None


def number(text: str) -> bool:
    float(text)
    return True


def anything(text: str) -> bool:
    return bool(text)


def iso_date(text: str) -> bool:
    datetime.fromisoformat(text)
    return True


def kohya_reference(config: TrainingConfig, family: str, resolution: int, *, min_bucket: int, max_bucket: int,
                    captions: dict[str, list[str]], repeats: dict[str, int], reg_groups: set[str],
                    base_hashes: tuple[str, str] | None) -> dict[str, Expectation]:
    """The keys and values kohya writes for `config`, a dataset whose groups hold `captions` (one per
    image) and a base model whose file hashes are `base_hashes` (None: not a local file)."""
    train_groups = {group: caps for group, caps in captions.items() if group not in reg_groups}
    reference: dict[str, Expectation] = {
        "ss_session_id": integer,
        "ss_training_started_at": number,
        "ss_output_name": config.output_name,
        "ss_learning_rate": str(config.unet_lr),
        "ss_text_encoder_lr": str(config.text_encoder_lr),
        "ss_unet_lr": str(config.unet_lr),
        "ss_num_train_images": str(sum(len(c) * repeats[g] for g, c in train_groups.items())),
        "ss_num_validation_images": "0",
        "ss_num_reg_images": str(sum(len(captions[g]) * repeats[g] for g in reg_groups)),
        "ss_num_batches_per_epoch": integer,
        "ss_num_epochs": str(config.epochs),
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation_steps),
        "ss_max_train_steps": integer,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.network_dim),
        "ss_network_alpha": str(float(config.network_alpha)),
        "ss_network_dropout": "None",
        "ss_mixed_precision": config.mixed_precision,
        "ss_full_fp16": "False",
        "ss_v2": "False",
        "ss_base_model_version": {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}[family],
        "ss_clip_skip": str(config.clip_skip) if family == "sd15" else "None",
        "ss_max_token_length": "None",
        "ss_cache_latents": str(config.cache_latents),
        "ss_seed": str(config.seed),
        "ss_lowram": "False",
        "ss_noise_offset": str(config.noise_offset) if config.noise_offset else "None",
        "ss_multires_noise_iterations": str(config.multires_noise_iterations or None),
        "ss_multires_noise_discount": str(config.multires_noise_discount),
        "ss_adaptive_noise_scale": "None",
        "ss_zero_terminal_snr": "False",
        "ss_training_comment": "None",
        "ss_sd_scripts_commit_hash": anything,
        "ss_optimizer": "torch.optim.adamw.AdamW",
        "ss_max_grad_norm": str(config.max_grad_norm),
        "ss_caption_dropout_rate": str(config.caption_dropout_rate),
        "ss_caption_dropout_every_n_epochs": str(config.caption_dropout_every_n_epochs),
        "ss_caption_tag_dropout_rate": str(config.caption_tag_dropout_rate),
        "ss_face_crop_aug_range": "None",
        "ss_prior_loss_weight": str(config.prior_loss_weight),
        "ss_min_snr_gamma": str(config.min_snr_gamma),
        "ss_scale_weight_norms": "None",
        "ss_ip_noise_gamma": "None",
        "ss_debiased_estimation": "False",
        "ss_noise_offset_random_strength": "False",
        "ss_ip_noise_gamma_random_strength": "False",
        "ss_loss_type": "l2",
        "ss_huber_schedule": "snr",
        "ss_huber_scale": "1.0",
        "ss_huber_c": "0.1",
        "ss_fp8_base": "False",
        "ss_fp8_base_unet": "False",
        "ss_validation_seed": "None",
        "ss_validation_split": "0.0",
        "ss_max_validation_steps": "None",
        "ss_validate_every_n_epochs": "None",
        "ss_validate_every_n_steps": "None",
        "ss_resize_interpolation": "None",
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_total_batch_size": str(config.batch_size * config.gradient_accumulation_steps),
        "ss_resolution": str((resolution, resolution)),
        "ss_color_aug": "False",
        "ss_flip_aug": str(config.flip_aug),
        "ss_random_crop": "False",
        "ss_shuffle_caption": str(config.shuffle_caption),
        "ss_enable_bucket": "True",
        "ss_bucket_no_upscale": str(config.bucket_no_upscale),
        "ss_min_bucket_reso": str(min_bucket),
        "ss_max_bucket_reso": str(max_bucket),
        "ss_keep_tokens": str(config.keep_tokens),
        "ss_dataset_dirs": json.dumps({g: {"n_repeats": repeats[g], "img_count": len(c)}
                                       for g, c in train_groups.items()}),
        "ss_reg_dataset_dirs": json.dumps({g: {"n_repeats": repeats[g], "img_count": len(captions[g])}
                                           for g in sorted(reg_groups)}),
        "ss_tag_frequency": json.dumps({g: kohya_tag_counts(c) for g, c in captions.items()}),
        "ss_bucket_info": bucket_info,
        "ss_sd_model_name": anything,
        "ss_training_finished_at": number,
        "ss_steps": integer,
        "ss_epoch": integer,
        "sshs_model_hash": lambda text: re.fullmatch(r"[0-9a-f]{64}", text) is not None,
        "sshs_legacy_hash": lambda text: re.fullmatch(r"[0-9a-f]{8}", text) is not None,
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": {"sd15": "stable-diffusion-v1/lora",
                                   "sdxl": "stable-diffusion-xl-v1-base/lora"}[family],
        "modelspec.implementation": {"sd15": "diffusers",
                                     "sdxl": "https://github.com/Stability-AI/generative-models"}[family],
        "modelspec.implementation_version": lambda text: re.fullmatch(r"\S+/\S+", text) is not None,
        "modelspec.title": config.output_name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": iso_date,
        "modelspec.prediction_type": "epsilon",
    }
    if config.conv_dim is not None:
        reference["ss_network_args"] = json.dumps({"conv_dim": str(config.conv_dim),
                                                   "conv_alpha": str(config.effective_conv_alpha)})
    if family == "sd15":
        reference["modelspec.encoder_layer"] = str(config.clip_skip)
    if base_hashes is not None:
        reference["ss_sd_model_hash"], reference["ss_new_sd_model_hash"] = base_hashes
    return reference


def kohya_tag_counts(captions: list[str]) -> dict[str, int]:
    """Tags split at commas, stripped, lowercased; empty ones skipped."""
    counts: dict[str, int] = {}
    for caption in captions:
        for tag in caption.split(","):
            tag = tag.strip().lower()
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return counts


def bucket_info(text: str) -> bool:
    info = json.loads(text)
    buckets = info["buckets"]
    assert list(buckets) == [str(i) for i in range(len(buckets))]
    assert all(set(b) == {"resolution", "count"} and len(b["resolution"]) == 2 for b in buckets.values())
    return isinstance(info["mean_img_ar_error"], float)


def metadata_of(data: bytes) -> dict[str, str]:
    header_length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_length])["__metadata__"]


def assert_matches(metadata: dict[str, str], reference: dict[str, Expectation]) -> None:
    written = set(metadata) - KILN_EXTRAS
    assert written == set(reference), (
        f"missing {sorted(set(reference) - written)}, unexpected {sorted(written - set(reference))}")
    for key, expected in reference.items():
        if callable(expected):
            assert expected(metadata[key]), (key, metadata[key])
        else:
            assert metadata[key] == expected, (key, metadata[key], expected)


CAPTIONS = ["MyTrigger, Cat, red", "mytrigger, cat, blue ,", "mytrigger, CAT"]


def test_sd15_with_conv_layers_and_regularization_writes_what_kohya_writes(
        make_dataset, fast_config, run_training) -> None:
    # Four training samples; the regularization images declare six, so balancing leaves the third
    # one out: kohya still counts it (its folder holds it).
    dataset = make_dataset(count=2, reg_count=3, captions=CAPTIONS, repeat=2, reg_repeat=2)
    config = fast_config(network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=0.5, resolution=64,
                         min_bucket_reso=100, max_bucket_reso=130)
    trained = run_training(config, dataset)
    metadata = metadata_of(trained.writer.read("epochs/1/lora.safetensors"))
    reference = kohya_reference(
        config, "sd15", 64, min_bucket=64, max_bucket=192,  # whole 64 px steps: down and up
        captions={"training": CAPTIONS[:2], "regularization": [CAPTIONS[2], CAPTIONS[0], CAPTIONS[1]]},
        repeats={"training": 2, "regularization": 2}, reg_groups={"regularization"},
        base_hashes=("IsADirectory", "IsADirectory"),  # the built-in model is a diffusers folder
    )
    assert_matches(metadata, reference)
    # "Cat", "cat" and "CAT" are one tag, counted in each group as kohya counts it.
    frequency = json.loads(metadata["ss_tag_frequency"])
    assert frequency == {"training": {"mytrigger": 2, "cat": 2, "red": 1, "blue": 1},
                         "regularization": {"mytrigger": 3, "cat": 3, "red": 1, "blue": 1}}
    assert metadata["ss_num_reg_images"] == "6"


def test_sdxl_without_network_args_leaves_the_key_out(make_dataset, fast_config, model_store, tmp_path) -> None:
    dataset = make_dataset(family="sdxl", count=2, captions=CAPTIONS[:2])
    config = fast_config(base_model="tiny-sdxl", resolution=64, batch_size=1)
    writer = LocalDirectoryWriter(tmp_path / "out")
    requests = iter([(SAVE_NOW,)])  # a user's "save now" after the first step
    TrainingRun(config, dataset.snapshot, dataset.reader, writer, model_store,
                controls=lambda: next(requests, ())).run(False)
    reference = kohya_reference(
        config, "sdxl", 64, min_bucket=64, max_bucket=128, captions={"training": CAPTIONS[:2]},
        repeats={"training": 1}, reg_groups=set(), base_hashes=("IsADirectory", "IsADirectory"),
    )
    for saved in ("epochs/1/lora.safetensors", "steps/1/lora.safetensors"):
        metadata = metadata_of(writer.read(saved))
        assert "ss_network_args" not in metadata  # a reader that parses it as JSON must not meet "None"
        assert_matches(metadata, reference)
    assert metadata_of(writer.read("steps/1/lora.safetensors"))["ss_steps"] == "1"


def test_tag_frequency_lowercases_every_tag(make_dataset) -> None:
    dataset = make_dataset(count=3, captions=["Blue Sky, MyTrigger", "blue sky, mytrigger,, ", "BLUE SKY"])
    assert tag_frequency(dataset.snapshot.images) == {"training": {"blue sky": 3, "mytrigger": 2}}


def test_single_file_base_models_give_their_a1111_hashes(tmp_path: Path, model_store: ModelStore) -> None:
    data = bytes(range(256)) * 5000  # 1.22 MiB: the old hash's 64 KiB at 1 MiB lie inside
    file = tmp_path / "model.safetensors"
    file.write_bytes(data)
    hashes = hash_checkpoint(file)
    assert hashes.sd_model_hash == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert hashes.new_sd_model_hash == hashlib.sha256(data).hexdigest()
    assert model_store.resolve("tiny-sd15").hashes is not None
    assert model_store.resolve("tiny-sd15").hashes.sd_model_hash == "IsADirectory"


# --- Against files kohya wrote ---------------------------------------------------------------------
# The reference above is read from kohya's writer; these check Kiln's writer, and that reference,
# against the headers of two LoRA files kohya's train_network.py really wrote (fixtures/*.json say
# where each came from). Both runs used the LyCORIS network module through kohya's script, which
# changes ss_network_module and ss_network_args' keys, not the writer or its value formats.
FIXTURES = Path(__file__).parent / "fixtures"
REAL_HEADERS = {"sd15": "kohya_sd15_header.json", "sdxl": "kohya_sdxl_header.json"}

# Float options the SD1.5 run gave kohya as integers (its headers write str() of what it was given:
# "2" where its float-typed command line gives "2.0", as the SDXL file's "16.0" shows).
FLOATS_GIVEN_AS_INTEGERS = {"ss_network_alpha", "ss_network_dropout", "ss_min_snr_gamma"}

# Options Kiln doesn't offer and so leaves unset ("None", as kohya writes an unset option) where
# the real run set them.
UNSET_IN_KILN = {
    "ss_network_dropout": "no dropout option",
    "ss_scale_weight_norms": "no max-norm regularisation option",
    "ss_max_token_length": "captions are always one 75-token chunk",
    "ss_training_comment": "no free-text comment option",
}


def real_header(family: str) -> dict[str, str]:
    return json.loads((FIXTURES / REAL_HEADERS[family]).read_text())["__metadata__"]


def value_kind(text: str) -> str:
    """How kohya's writer formats a value: str() of a bool, None, int, float or tuple, or JSON."""
    if text in ("True", "False"):
        return "bool"
    if text == "None":
        return "none"
    if re.fullmatch(r"-?\d+", text):
        return "int"
    if re.fullmatch(r"-?\d+\.\d+(e-?\d+)?|-?\d+e-?\d+", text):
        return "float"
    if re.fullmatch(r"\(\d+, \d+\)", text):
        return "tuple"
    if text.startswith(("{", "[")):
        return "json " + type(json.loads(text)).__name__
    return "text"


def tag_frequency_shape(text: str) -> bool:
    groups = json.loads(text)
    return isinstance(groups, dict) and all(
        isinstance(tags, dict) and all(isinstance(tag, str) and type(count) is int for tag, count in tags.items())
        for tags in groups.values())


def dataset_dirs_shape(text: str) -> bool:
    dirs = json.loads(text)
    return isinstance(dirs, dict) and all(
        list(entry) == ["n_repeats", "img_count"] and all(type(n) is int for n in entry.values())
        for entry in dirs.values())


def network_args_shape(text: str) -> bool:
    """A JSON object of the network's arguments by name."""
    args = json.loads(text)
    return isinstance(args, dict) and bool(args)


def split_from_command_line(text: str) -> bool:
    """Every argument a string, as kohya splits ``--network_args key=value`` (a config file can
    give it other JSON types, as the SD1.5 file's ``"dropout": 0`` shows)."""
    return all(isinstance(value, str) for value in json.loads(text).values())


JSON_SHAPES: dict[str, Callable[[str], bool]] = {
    "ss_tag_frequency": tag_frequency_shape,
    "ss_dataset_dirs": dataset_dirs_shape,
    "ss_reg_dataset_dirs": dataset_dirs_shape,
    "ss_bucket_info": bucket_info,
    "ss_network_args": network_args_shape,
}

# Values whose form is fixed beyond their kind.
FORMS = {
    "ss_optimizer": r"[a-z_][\w.]*\.\w+(\(\w+=.+\))?",  # module.Class(name=value,name=value)
    "sshs_model_hash": r"[0-9a-f]{64}",
    "sshs_legacy_hash": r"[0-9a-f]{8}",
    "ss_base_model_version": r"sd_v1|sdxl_base_v\d-\d",
    "modelspec.sai_model_spec": r"\d+\.\d+\.\d+",
    "modelspec.resolution": r"\d+x\d+",
    "modelspec.date": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d",  # whole seconds, no offset
}


def kinds_agree(key: str, ours: str, theirs: str) -> bool:
    mine, real = value_kind(ours), value_kind(theirs)
    if mine == real:
        return True
    if key in FLOATS_GIVEN_AS_INTEGERS and (mine, real) == ("float", "int"):
        return True
    return key in UNSET_IN_KILN and mine == "none"


# Kiln's settings nearest each real run (on the tiny models): the options either run set that
# Kiln offers are set here too, so a value is compared with one of its own kind.
COMPARABLE: dict[str, dict[str, Any]] = {
    "sd15": dict(clip_skip=2, shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.05,
                 gradient_checkpointing=True, cache_latents=True, multires_noise_iterations=6,
                 min_snr_gamma=5.0, network_alpha=2, conv_dim=2, conv_alpha=1,
                 optimizer_args={"weight_decay": 0.1}, resolution=(64, 128), max_bucket_reso=128),
    "sdxl": dict(base_model="tiny-sdxl", batch_size=1, gradient_checkpointing=True, cache_latents=True,
                 bucket_no_upscale=True, noise_offset=0.0357, max_grad_norm=0.0, conv_dim=2, conv_alpha=1,
                 unet_lr=1.0, text_encoder_lr=1.0, resolution=64),
}


@pytest.fixture(scope="module")
def kiln_headers(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> dict[str, dict[str, str]]:
    """The metadata of a LoRA Kiln trains for each family with the settings of COMPARABLE."""
    headers = {}
    for family, settings in COMPARABLE.items():
        root = tmp_path_factory.mktemp(f"kohya-{family}")
        dataset = build_dataset(root / "objects", family=family, count=2, captions=CAPTIONS[:2])
        config = parse_config({**FAST, **settings})
        writer = LocalDirectoryWriter(root / "out")
        TrainingRun(config, dataset.snapshot, dataset.reader, writer, model_store).run(False)
        headers[family] = metadata_of(writer.read("epochs/1/lora.safetensors"))
    return headers


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_key_kohya_wrote_is_one_kiln_writes(kiln_headers: dict[str, dict[str, str]], family: str) -> None:
    real = real_header(family)
    # Options Kiln doesn't offer are written too, with kohya's values for them being off.
    missing = set(real) - set(kiln_headers[family])
    assert not missing, f"kohya wrote {sorted(missing)}, Kiln does not"


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_kiln_formats_each_value_as_kohya_did(kiln_headers: dict[str, dict[str, str]], family: str) -> None:
    real, ours = real_header(family), kiln_headers[family]
    for key in real.keys() & ours.keys():
        assert kinds_agree(key, ours[key], real[key]), (key, ours[key], real[key])
        if key in JSON_SHAPES:
            assert JSON_SHAPES[key](real[key]), (key, real[key])
            assert JSON_SHAPES[key](ours[key]), (key, ours[key])
        if key in FORMS:
            assert re.fullmatch(FORMS[key], real[key]), (key, real[key])
            assert re.fullmatch(FORMS[key], ours[key]), (key, ours[key])
    assert split_from_command_line(ours["ss_network_args"])
    assert split_from_command_line(real_header("sdxl")["ss_network_args"])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_reference_agrees_with_the_files_kohya_wrote(family: str) -> None:
    real = real_header(family)
    config = parse_config({**FAST, **COMPARABLE[family]})
    reference = kohya_reference(config, family, 64, min_bucket=64, max_bucket=128,
                                captions={"training": CAPTIONS[:2]}, repeats={"training": 1}, reg_groups=set(),
                                base_hashes=(real["ss_sd_model_hash"], real["ss_new_sd_model_hash"]))
    missing = set(real) - set(reference)
    assert not missing, f"kohya wrote {sorted(missing)}, the reference lacks them"
    for key in real.keys() & reference.keys():
        expected = reference[key]
        if callable(expected):
            assert expected(real[key]), (key, real[key])
        else:
            assert kinds_agree(key, expected, real[key]), (key, expected, real[key])
