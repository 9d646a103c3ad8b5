"""Per-epoch training state, so a run interrupted anywhere restarts from its last saved epoch and
ends with the same weights as if it had never stopped (same adapter, optimizer and scheduler
state, random streams and step)."""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .artifacts import ArtifactKeys, ArtifactWriter

_CHECKPOINT_KEY = re.compile(r"^epochs/(\d+)/checkpoint\.pt$")


@dataclass
class RandomStreams:
    """Every random draw of a run comes from one of these, never from ambient global state."""

    data: random.Random  # epoch order, caption shuffling and dropout, flips
    noise: torch.Generator  # noise, timesteps, VAE sampling

    @classmethod
    def from_seed(cls, seed: int) -> RandomStreams:
        return cls(random.Random(seed), torch.Generator().manual_seed(seed))

    def state(self) -> dict[str, Any]:
        return {"data": self.data.getstate(), "noise": self.noise.get_state(), "torch": torch.get_rng_state()}

    def restore(self, state: dict[str, Any]) -> None:
        data_state = state["data"]
        self.data.setstate((data_state[0], tuple(data_state[1]), data_state[2]))
        self.noise.set_state(state["noise"])
        torch.set_rng_state(state["torch"])


def lora_state(modules: dict[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {
        component: {name: p.detach().cpu().clone() for name, p in module.named_parameters() if "lora_" in name}
        for component, module in modules.items()
    }


def load_lora_state(modules: dict[str, nn.Module], state: dict[str, dict[str, torch.Tensor]]) -> None:
    for component, module in modules.items():
        params = dict(module.named_parameters())
        saved = state[component]
        missing = [name for name in params if "lora_" in name and name not in saved]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} LoRA tensors of {component} (e.g. {missing[0]})")
        with torch.no_grad():
            for name, tensor in saved.items():
                params[name].copy_(tensor)


def save_checkpoint(writer: ArtifactWriter, epoch: int, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    writer.write(ArtifactKeys.checkpoint(epoch), buffer.getvalue())


def latest_checkpoint(writer: ArtifactWriter) -> tuple[int, dict[str, Any]] | None:
    epochs = []
    for key in writer.list("epochs"):
        match = _CHECKPOINT_KEY.match(key)
        if match:
            epochs.append(int(match.group(1)))
    if not epochs:
        return None
    epoch = max(epochs)
    data = writer.read(ArtifactKeys.checkpoint(epoch))
    if data is None:
        return None
    # Only our own writer's bytes are read here; optimizer states hold plain tensors and numbers.
    return epoch, torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
