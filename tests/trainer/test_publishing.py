"""Publish metadata: the same tensor bytes, the name/description/trigger/cover keys readers use,
kohya's hashes, and a file diffusers and test generation still load."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from services.trainer.engine.errors import InvalidPublishRequest
from services.trainer.engine.generation import GenerationCache, GenerationRequest, generate
from services.trainer.engine.metadata import serialize_lora
from services.trainer.engine.publishing import publish_metadata, read_header, read_metadata


@pytest.fixture
def trained_lora(make_dataset, fast_config, run_training) -> bytes:
    trained = run_training(fast_config(unet_lr=1e-2, text_encoder_lr=1e-2), make_dataset(count=2))
    return trained.writer.read("epochs/1/lora.safetensors")


def _kohya_hashes(data: bytes) -> tuple[str, str]:
    """kohya's precalculate_safetensors_hashes, written out independently of the engine."""
    training_only = {k: v for k, v in read_metadata(data).items() if k.startswith("ss_")}
    saved = safetensors.torch.save(safetensors.torch.load(data), training_only)
    start = 8 + int.from_bytes(saved[:8], "little")
    return hashlib.sha256(saved[start:]).hexdigest(), hashlib.sha256(saved[0x100000:0x110000]).hexdigest()[:8]


def _tensor_bytes(data: bytes) -> bytes:
    return data[read_header(data)[1]:]


def test_publish_sets_the_readers_keys_and_keeps_every_tensor_byte(trained_lora, make_image) -> None:
    cover = make_image(640, 480, 3)
    published = publish_metadata(trained_lora, name="Red Hat Girl", description="A test LoRA — ünïcode too.",
                                 trigger_words=["mytrigger", " red hat ", "mytrigger"], thumbnail=cover)
    before, after = read_metadata(trained_lora), read_metadata(published)

    assert after["ss_output_name"] == "Red Hat Girl"
    assert after["modelspec.title"] == after["ssmd_display_name"] == "Red Hat Girl"
    assert after["modelspec.description"] == after["ssmd_description"] == "A test LoRA — ünïcode too."
    assert after["modelspec.trigger_phrase"] == after["ssmd_keywords"] == "mytrigger, red hat"
    prefix = "data:image/jpeg;base64,"
    assert after["modelspec.thumbnail"].startswith(prefix)
    jpeg = base64.b64decode(after["modelspec.thumbnail"].removeprefix(prefix))
    thumbnail = Image.open(io.BytesIO(jpeg))
    assert thumbnail.format == "JPEG" and thumbnail.size == (256, 192)
    assert json.loads(after["ssmd_cover_images"]) == [base64.b64encode(jpeg).decode()]

    changed = {"ss_output_name", "modelspec.title", "sshs_legacy_hash"}
    for key, value in before.items():
        if key not in changed:
            assert after[key] == value, key  # ss_tag_frequency, architecture, training keys …
    assert json.loads(after["ss_tag_frequency"])["training"]["mytrigger"] == 2

    # Tensor bytes and their header entries are the original ones.
    assert _tensor_bytes(published) == _tensor_bytes(trained_lora)
    original_entries = {k: v for k, v in read_header(trained_lora)[0].items() if k != "__metadata__"}
    assert {k: v for k, v in read_header(published)[0].items() if k != "__metadata__"} == original_entries
    assert (read_header(published)[1]) % 8 == 0
    reloaded, original = safetensors.torch.load(published), safetensors.torch.load(trained_lora)
    assert reloaded.keys() == original.keys()
    assert all(torch.equal(reloaded[key], original[key]) for key in original)

    # kohya's hashes: the model hash (tensor bytes) is unchanged; both match a recomputation.
    assert after["sshs_model_hash"] == before["sshs_model_hash"] == hashlib.sha256(_tensor_bytes(published)).hexdigest()
    assert (after["sshs_model_hash"], after["sshs_legacy_hash"]) == _kohya_hashes(published)
    assert (before["sshs_model_hash"], before["sshs_legacy_hash"]) == _kohya_hashes(trained_lora)

    # Publishing again with the same inputs changes nothing; without a cover keeps the cover.
    again = publish_metadata(published, name="Red Hat Girl", description="A test LoRA — ünïcode too.",
                             trigger_words=["mytrigger", "red hat"], thumbnail=cover)
    assert again == published
    renamed = read_metadata(publish_metadata(published, name="Other"))
    assert renamed["modelspec.thumbnail"] == after["modelspec.thumbnail"]
    assert "modelspec.description" not in renamed and "modelspec.trigger_phrase" not in renamed


def test_the_legacy_hash_follows_the_name_on_a_file_past_one_mebibyte() -> None:
    # A1111's legacy hash reads 64 KiB at 1 MiB, so the header length shifts it on real-size files.
    generator = torch.Generator().manual_seed(0)
    tensors = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.randn(8, 40000, generator=generator),
               "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.randn(40000, 8, generator=generator),
               "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(4.0)}
    data = serialize_lora(tensors, {"ss_output_name": "a", "ss_tag_frequency": "{}"})
    published = publish_metadata(data, name="a much longer output name", thumbnail=Image.new("RGB", (8, 8)))
    before, after = read_metadata(data), read_metadata(published)
    assert after["sshs_model_hash"] == before["sshs_model_hash"]
    assert after["sshs_legacy_hash"] != before["sshs_legacy_hash"]
    assert (after["sshs_model_hash"], after["sshs_legacy_hash"]) == _kohya_hashes(published)
    # The thumbnail is not an ss_ key: it doesn't move the hashes.
    assert read_metadata(publish_metadata(data, name="a"))["sshs_legacy_hash"] == before["sshs_legacy_hash"]


def test_the_published_file_loads_in_diffusers_and_generates_the_same_images(trained_lora, model_store) -> None:
    published = publish_metadata(trained_lora, name="published", trigger_words=["mytrigger"],
                                 thumbnail=Image.new("RGB", (300, 300), "red"))
    path = model_store.resolve("tiny-sd15").path
    pipes = []
    for data in (trained_lora, published):
        pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None)
        pipe.load_lora_weights(safetensors.torch.load(data), adapter_name="lora")
        pipes.append(pipe)
    for (name, a), (_, b) in zip(pipes[0].unet.named_parameters(), pipes[1].unet.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert any("lora" in name for name, _ in pipes[1].text_encoder.named_parameters())

    cache = GenerationCache(model_store)
    request = GenerationRequest("tiny-sd15", "mytrigger, square", steps=3, count=1, seed=9)
    images = [generate(replace(request, lora=data), model_store, cache=cache)[0] for data in (trained_lora, published)]
    assert np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_bad_publish_requests_list_every_problem(trained_lora) -> None:
    with pytest.raises(InvalidPublishRequest) as raised:
        publish_metadata(b"junk", name="  ", trigger_words=["ok", "a, b", ""], thumbnail=b"not an image")
    fields = [violation.field for violation in raised.value.violations]
    assert fields == ["lora", "name", "trigger_words[1]", "trigger_words[2]", "thumbnail"]
    with pytest.raises(InvalidPublishRequest, match="one line"):
        publish_metadata(trained_lora, name="two\nlines")
