"""Preview samplers: A1111/kohya names mapped to diffusers schedulers."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class Sampler:
    # The scheduler by module (under diffusers.schedulers) and class: imported only when a
    # preview uses it, so validating a configuration imports no scheduler at all.
    module: str
    class_name: str
    options: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # importable modules the scheduler needs

    def scheduler(self) -> type[SchedulerMixin]:
        from .model_libraries import scheduler_class, scipy_schedulers_enabled

        if "scipy" in self.requires and not scipy_schedulers_enabled():
            raise ImportError(f"{self.class_name} needs scipy, which is not installed")
        return scheduler_class(self.module, self.class_name)


SAMPLERS: dict[str, Sampler] = {
    "euler_a": Sampler("scheduling_euler_ancestral_discrete", "EulerAncestralDiscreteScheduler"),
    "euler": Sampler("scheduling_euler_discrete", "EulerDiscreteScheduler"),
    # SD latents are not in [-1, 1]: never clip the predicted sample (kohya and A1111 do not).
    "ddim": Sampler("scheduling_ddim", "DDIMScheduler", {"clip_sample": False}),
    "pndm": Sampler("scheduling_pndm", "PNDMScheduler", {"skip_prk_steps": True}),
    "heun": Sampler("scheduling_heun_discrete", "HeunDiscreteScheduler"),
    "lms": Sampler("scheduling_lms_discrete", "LMSDiscreteScheduler", requires=("scipy",)),
    "dpm2": Sampler("scheduling_k_dpm_2_discrete", "KDPM2DiscreteScheduler"),
    "dpm2_a": Sampler("scheduling_k_dpm_2_ancestral_discrete", "KDPM2AncestralDiscreteScheduler"),
    "dpm++ 2m": Sampler("scheduling_dpmsolver_multistep", "DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++"}),
    "dpm++ 2m karras": Sampler(
        "scheduling_dpmsolver_multistep", "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpm++ 2m sde karras": Sampler(
        "scheduling_dpmsolver_multistep", "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpm++ sde karras": Sampler("scheduling_dpmsolver_sde", "DPMSolverSDEScheduler", {"use_karras_sigmas": True},
                                ("torchsde", "scipy")),
    "unipc": Sampler("scheduling_unipc_multistep", "UniPCMultistepScheduler"),
}

# kohya's --sample_sampler spellings and common A1111 labels.
ALIASES = {
    "k_euler_a": "euler_a",
    "euler a": "euler_a",
    "k_euler": "euler",
    "k_lms": "lms",
    "k_dpm_2": "dpm2",
    "dpm_2": "dpm2",
    "k_dpm_2_a": "dpm2_a",
    "dpm_2_a": "dpm2_a",
    "dpmsolver++": "dpm++ 2m",
    "dpm++_2m": "dpm++ 2m",
    "dpm++_2m_karras": "dpm++ 2m karras",
    "dpm++_sde_karras": "dpm++ sde karras",
    "dpmpp_2m": "dpm++ 2m",
    "dpmpp_2m_karras": "dpm++ 2m karras",
    "dpmpp_sde_karras": "dpm++ sde karras",
    "uni_pc": "unipc",
}


def sampler_key(name: str) -> str:
    key = name.strip().lower()
    return ALIASES.get(key, key)


def is_importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def sampler_problem(name: str, importable: Callable[[str], bool] = is_importable) -> str | None:
    """None when the sampler exists and can run here (``importable`` says which modules are
    installed); otherwise why not."""
    key = sampler_key(name)
    if key not in SAMPLERS:
        return f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}"
    missing = [module for module in SAMPLERS[key].requires if not importable(module)]
    if missing:
        return f"sampler {name!r} needs the Python package(s) {missing}, which are not installed"
    return None


def make_scheduler(name: str, base_config: dict[str, Any]) -> SchedulerMixin:
    sampler = SAMPLERS[sampler_key(name)]
    return sampler.scheduler().from_config(base_config, **sampler.options)
