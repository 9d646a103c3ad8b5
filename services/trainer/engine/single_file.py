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

from .tokenizers import build_clip_tokenizer

CONFIG_ROOT = Path(__file__).with_name("model_configs")


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
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    with tempfile.TemporaryDirectory(prefix="kiln-config-") as scratch:
        configs = config_dir or config_folder(family, Path(scratch) / family)
        pipeline = pipeline_class.from_single_file(str(checkpoint), config=str(configs), local_files_only=True)
        pipeline.save_pretrained(target, safe_serialization=True)
