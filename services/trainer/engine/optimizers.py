"""Optimizers by kohya's ``--optimizer_type`` names, from well-kept libraries.

Arguments in ``optimizer_args`` are passed through to the constructor. Whether an optimizer can
run here is answered by running it: :func:`probe_optimizer` builds it on a scrap parameter on the
training device and takes one step, so a missing kernel or a bad argument fails the configuration
check instead of the first training step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that build an optimizer, not here: whether a name is
# known is asked by configuration checks that run where nothing trains (the trainer service).
OptimizerFactory = Callable[..., "torch.optim.Optimizer"]


def _adamw(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    import torch

    return torch.optim.AdamW(params, **kwargs)


def _adamw_8bit(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    import bitsandbytes

    return bitsandbytes.optim.AdamW8bit(params, **kwargs)


def _lion(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    from lion_pytorch import Lion

    return Lion(params, **kwargs)


def _prodigy(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    from prodigyopt import Prodigy

    return Prodigy(params, **kwargs)


def _dadapt_adam(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    from dadaptation import DAdaptAdam

    return DAdaptAdam(params, **kwargs)


def _adafactor(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    from transformers.optimization import Adafactor

    # With relative_step (transformers' default) Adafactor ignores the learning rate and needs
    # its own schedule; the common kohya recipe turns it off so the chosen LRs apply.
    defaults = {"scale_parameter": False, "relative_step": False, "warmup_init": False}
    return Adafactor(params, **{**defaults, **kwargs})


def _sgd_nesterov(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    import torch

    kwargs.setdefault("momentum", 0.9)  # kohya's default for SGDNesterov
    return torch.optim.SGD(params, nesterov=True, **kwargs)


OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adamw": _adamw,
    "adamw8bit": _adamw_8bit,
    "lion": _lion,
    "prodigy": _prodigy,
    "adafactor": _adafactor,
    "dadaptadam": _dadapt_adam,
    "dadaptation": _dadapt_adam,  # kohya's older name for DAdaptAdam
    "sgdnesterov": _sgd_nesterov,
}


def optimizer_key(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def is_known_optimizer(name: str) -> bool:
    return optimizer_key(name) in OPTIMIZERS


def build_optimizer(name: str, param_groups: list[dict[str, Any]], args: dict[str, Any]) -> torch.optim.Optimizer:
    # The largest group LR also becomes the optimizer's default, as kohya passes ``lr=``: schedules
    # such as polynomial decay read ``optimizer.defaults["lr"]``, which some libraries leave None.
    lrs = [group["lr"] for group in param_groups if "lr" in group]
    defaults = {"lr": max(lrs)} if lrs else {}
    return OPTIMIZERS[optimizer_key(name)](param_groups, **{**defaults, **dict(args)})


def probe_optimizer(
    name: str, args: dict[str, Any], device: torch.device, learning_rates: list[float] | None = None
) -> str | None:
    """None when the optimizer runs on ``device`` with ``args`` and one parameter group per
    learning rate; otherwise why it doesn't."""
    import torch

    try:
        # Big enough that 8-bit optimizers really take their quantized path (>= 4096 elements).
        params = [torch.nn.Parameter(torch.zeros(64, 64, device=device)) for _ in learning_rates or [1e-4]]
        groups = [{"params": [param], "lr": lr} for param, lr in zip(params, learning_rates or [1e-4], strict=True)]
        optimizer = build_optimizer(name, groups, args)
        for param in params:
            param.grad = torch.ones_like(param)
        optimizer.step()
    except Exception as error:  # any failure means "can't train with this here"
        return f"{type(error).__name__}: {error}".strip()
    return None
