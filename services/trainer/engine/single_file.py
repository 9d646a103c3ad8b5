"""Converting a single-file checkpoint (``.safetensors`` / ``.ckpt`` as model sites distribute them)
into a diffusers folder, fully offline.

diffusers' ``from_single_file`` needs the diffusers configs of the architecture; it would fetch
them from a hub. They ship here instead (``model_configs/<family>/``, the public SD1.5 and SDXL 1.0
base configs), completed with tokenizer files generated from the local CLIP vocabulary.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .tokenizers import build_clip_tokenizer

if TYPE_CHECKING:
    from transformers.models.clip.modeling_clip import CLIPTextModelWithProjection

CONFIG_ROOT = Path(__file__).with_name("model_configs")
_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."


def config_folder(family: str, target: Path) -> Path:
    """A complete diffusers config folder (no weights) for ``family`` under ``target``."""
    shutil.copytree(CONFIG_ROOT / family, target, dirs_exist_ok=True)
    build_clip_tokenizer().save_pretrained(target / "tokenizer")
    if family == "sdxl":
        build_clip_tokenizer(pad_token="!").save_pretrained(target / "tokenizer_2")
    return target


def convert_single_file(checkpoint: Path, target: Path, family: str, config_dir: Path | None = None) -> None:
    """``config_dir``: a diffusers folder whose configs describe the checkpoint, for architectures
    other than the standard SD1.5 / SDXL 1.0 ones (default: the shipped configs)."""
    from .model_libraries import pipeline_classes

    StableDiffusionPipeline, StableDiffusionXLPipeline = pipeline_classes()
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    with tempfile.TemporaryDirectory(prefix="kiln-config-") as scratch:
        configs = config_dir or config_folder(family, Path(scratch) / family)
        components = {}
        if family == "sdxl" and (encoder := _open_clip_text_encoder(checkpoint, configs)) is not None:
            components["text_encoder_2"] = encoder
        pipeline = pipeline_class.from_single_file(
            str(checkpoint), config=str(configs), local_files_only=True, **components
        )
        pipeline.save_pretrained(target, safe_serialization=True)


def _open_clip_text_encoder(checkpoint: Path, configs: Path) -> CLIPTextModelWithProjection | None:
    """SDXL's second text encoder, converted from the checkpoint's OpenCLIP keys only.

    diffusers picks each encoder's keys by matching its width, which only works while the two
    encoders differ (768 and 1280 in SDXL 1.0): with equal widths the second encoder would get the
    first one's weights and no projection. ``None`` when the file has no OpenCLIP encoder.
    """
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm, load_single_file_checkpoint
    from safetensors import safe_open

    from .model_libraries import CLIPTextModelWithProjection

    if checkpoint.suffix == ".safetensors":
        # Only the encoder's tensors: the whole file is loaded again by from_single_file.
        with safe_open(str(checkpoint), "pt") as file:
            keys = file.keys()
            state = {key: file.get_tensor(key) for key in keys if key.startswith(_OPEN_CLIP_PREFIX)}
    else:
        state = load_single_file_checkpoint(str(checkpoint), local_files_only=True)
        state = {key: value for key, value in state.items() if key.startswith(_OPEN_CLIP_PREFIX)}
    if _OPEN_CLIP_PREFIX + "positional_embedding" not in state:
        return None
    return create_diffusers_clip_model_from_ldm(
        CLIPTextModelWithProjection, state, subfolder="text_encoder_2", config=str(configs), local_files_only=True
    )
