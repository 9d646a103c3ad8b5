"""The engine's one way into diffusers, transformers and peft: the classes it uses, each imported
from the submodule that defines it, with two optional packages kept out of the libraries' imports.

Start-up is mostly imports (a tiny-model run spends ~80% of its time to the first step in them).
Measured on 2 cores, CPU seconds / MB of RSS, each on top of the ones before:

- ``torch``: 1.5 s — the floor.
- ``transformers.modeling_utils`` (any transformers model): 2.4 s, of which ``torch._dynamo``,
  ``torch._inductor`` and ``sympy`` are most. They can't be avoided: transformers 5.23 decorates
  functions with ``torch._dynamo.assume_constant_result`` and ``torch.compiler.disable`` at
  import time (integrations/deepgemm, generation/continuous_batching) and imports
  ``torch.distributed.tensor`` (which imports sympy) for sharded loading; no environment
  variable or setting turns that off. diffusers' ``maybe_allow_in_graph`` needs
  ``torch._dynamo`` too, but transformers has imported it by then.
- **scipy** (1.1 s, 57 MB): transformers' object-detection losses import ``scipy.optimize``;
  diffusers' DPM-Solver scheduler imports ``scipy.stats`` (for beta sigmas), and single-file
  loading imports that scheduler. Nothing the engine trains with uses scipy; only the ``lms`` and
  ``dpm++ sde karras`` preview samplers do, and :func:`scipy_schedulers_enabled` brings it in
  for them.
- **bitsandbytes** (1.4 s, 50 MB: it imports ``torch._inductor``'s compiler): peft's helpers and
  diffusers' quantizers import it to load and dequantize bnb-quantized weights, which the engine
  never has (base models are loaded in full precision). The AdamW8bit optimizer imports it
  itself when chosen (``optimizers.py``), so it still works.

Both packages are kept out the documented way: while the libraries import, ``sys.modules`` maps
their names to ``None`` (``import`` then raises ImportError and ``importlib.util.find_spec``
answers None), so each library takes the branch it has for the package being absent and
remembers that answer; then the entries are removed, and a later ``import scipy`` or ``import
bitsandbytes`` works as usual. A process that imported either before (a test run, a caller of
the engine) keeps it: names already in ``sys.modules`` are left alone.

The diffusion pipelines (only previews and building the tiny models use them) are imported on
first use: :func:`pipeline_classes`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch  # noqa: F401  (first, outside the window below: torch's own import sees every package)

DEFERRED_PACKAGES = ("bitsandbytes", "scipy")


@contextlib.contextmanager
def deferred_packages_hidden(names: tuple[str, ...] = DEFERRED_PACKAGES) -> Iterator[None]:
    """While inside, the packages in ``names`` that nothing imported yet look absent. Imports in
    other threads see the same; the engine imports its libraries before it starts any."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "absent", per the import system
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


with deferred_packages_hidden():
    import peft.import_utils
    import transformers.utils.import_utils
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from diffusers.utils import import_utils as _diffusers_import_utils
    from diffusers.utils import logging as diffusers_logging
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from transformers.models.clip.configuration_clip import CLIPTextConfig
    from transformers.models.clip.modeling_clip import CLIPTextModel, CLIPTextModelWithProjection
    from transformers.models.clip.tokenization_clip import CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    # Asked later (peft when it attaches an adapter, transformers when it loads weights) and
    # cached on first call: asked here, they remember "absent" instead of importing bitsandbytes
    # in the middle of setting up a run.
    peft.import_utils.is_bnb_available()
    peft.import_utils.is_bnb_4bit_available()
    transformers.utils.import_utils.is_bitsandbytes_available()

if TYPE_CHECKING:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline


class _TorchvisionFallbackNotice(logging.Filter):
    """transformers says, once per class, that ``CLIPImageProcessor`` and ``SiglipImageProcessor``
    fall back to their PIL versions because torchvision is missing. The diffusion pipelines name
    those classes at import (``pipeline_stable_diffusion``, ``loaders.ip_adapter``) though the
    engine gives them no image processor (no safety checker, no IP adapter), and torchvision
    can't be installed beside this torch (DESIGN §8). Only that notice is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back to" not in record.getMessage()


def pipeline_classes() -> tuple[type[StableDiffusionPipeline], type[StableDiffusionXLPipeline]]:
    """The SD1.5 and SDXL pipelines, imported on first use (~0.1 s and 20 MB the training path
    doesn't need)."""
    notice = _TorchvisionFallbackNotice()
    logger = transformers_logging.get_logger("transformers.utils.import_utils")
    logger.addFilter(notice)
    try:
        with deferred_packages_hidden():
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
            from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
                StableDiffusionXLPipeline,
            )
    finally:
        logger.removeFilter(notice)
    return StableDiffusionPipeline, StableDiffusionXLPipeline


def scipy_schedulers_enabled() -> bool:
    """Make scipy available to diffusers' schedulers (LMS, DPM-Solver SDE) that need it; False
    when scipy isn't installed. diffusers decides once, at its import, whether scipy is there, and
    was imported with scipy kept out (see above); its schedulers ask that answer when their
    module is first imported, so it is updated before that."""
    try:
        scipy = importlib.import_module("scipy")
        importlib.import_module("scipy.stats")
        importlib.import_module("scipy.integrate")
    except ImportError:
        return False
    if not _diffusers_import_utils.is_scipy_available():
        _diffusers_import_utils._scipy_available = True
        _diffusers_import_utils._scipy_version = scipy.__version__
    return True


def scheduler_class(module: str, name: str) -> type[SchedulerMixin]:
    """A diffusers scheduler from its module under ``diffusers.schedulers``."""
    with deferred_packages_hidden():
        scheduler: Any = getattr(importlib.import_module(f"diffusers.schedulers.{module}"), name)
    return scheduler


def disable_library_progress_bars() -> None:
    """The libraries' per-load bars (e.g. "Loading weights") would break up a caller's own."""
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


__all__ = [
    "AttnProcessor", "AttnProcessor2_0", "AutoencoderKL", "CLIPTextConfig", "CLIPTextModel",
    "CLIPTextModelWithProjection", "CLIPTokenizer", "DDPMScheduler", "EulerDiscreteScheduler", "LoraConfig",
    "LoraLayer", "SchedulerMixin", "UNet2DConditionModel", "get_scheduler",
]
