"""What a test generation asks for, and its checks: importable without torch, so the trainer
service validates a request without loading the libraries that render it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import Violation
from .samplers import sampler_problem

MAX_COUNT = 16
MAX_STEPS = 150
MAX_SIDE = 2048
MAX_STRENGTH = 10.0

@dataclass(frozen=True)
class GenerationRequest:
    """One test generation. ``lora`` is a kohya-format file's bytes (None: the base model alone);
    ``strength`` multiplies it as A1111's ``<lora:name:strength>`` (0 = the base model). Width and
    height default to the base model's resolution."""

    base_model: str
    prompt: str
    lora: bytes | None = field(default=None, repr=False)  # megabytes: kept out of logs
    strength: float = 1.0
    negative_prompt: str = ""
    seed: int = 1234
    sampler: str = "euler_a"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = None
    height: int | None = None
    count: int = 1
    clip_skip: int = 1  # SD1.5 only, as in training

    def problems(self) -> list[Violation]:
        problems: list[Violation] = []

        def bad(name: str, message: str) -> None:
            problems.append(Violation(name, message))

        if not self.base_model:
            bad("base_model", "required")
        if (why := sampler_problem(self.sampler)) is not None:
            bad("sampler", why)
        if not math.isfinite(self.strength) or abs(self.strength) > MAX_STRENGTH:
            bad("strength", f"must be a number from {-MAX_STRENGTH:g} to {MAX_STRENGTH:g}")
        if self.lora is not None and not self.lora:
            bad("lora", "empty file")
        if not 0 <= self.seed < 2**63 - MAX_COUNT:
            bad("seed", "must be a non-negative 63-bit integer")
        if not 1 <= self.steps <= MAX_STEPS:
            bad("steps", f"must be 1 to {MAX_STEPS}")
        if not math.isfinite(self.cfg_scale) or not 0 <= self.cfg_scale <= 30:
            bad("cfg_scale", "must be 0 to 30")
        for name, side in (("width", self.width), ("height", self.height)):
            if side is not None and (side % 8 or not 64 <= side <= MAX_SIDE):
                bad(name, f"must be a multiple of 8 from 64 to {MAX_SIDE}")
        if not 1 <= self.count <= MAX_COUNT:
            bad("count", f"must be 1 to {MAX_COUNT}")
        if not 1 <= self.clip_skip <= 12:
            bad("clip_skip", "must be 1 to 12")
        return problems
