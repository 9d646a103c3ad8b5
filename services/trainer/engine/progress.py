"""Progress events for a callback: the trainer service turns them into job events."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["loading", "caching", "training", "sampling", "saving", "done"]


@dataclass(frozen=True)
class ProgressEvent:
    phase: Phase
    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    loss: float | None = None
    smoothed_loss: float | None = None
    learning_rates: dict[str, float] = field(default_factory=dict)
    steps_per_second: float | None = None
    eta_seconds: float | None = None
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


class ProgressTracker:
    """Smooths the loss (exponential moving average) and measures speed and ETA."""

    def __init__(self, total_steps: int, total_epochs: int, smoothing: float = 0.9) -> None:
        self.total_steps = total_steps
        self.total_epochs = total_epochs
        self.smoothing = smoothing
        self.smoothed_loss: float | None = None
        self._start: float | None = None
        self._start_step = 0

    def start(self, step: int) -> None:
        self._start = time.perf_counter()
        self._start_step = step

    def step_event(self, step: int, epoch: int, loss: float, learning_rates: dict[str, float]) -> ProgressEvent:
        if self.smoothed_loss is None:
            self.smoothed_loss = loss
        else:
            self.smoothed_loss = self.smoothing * self.smoothed_loss + (1 - self.smoothing) * loss
        rate = eta = None
        if self._start is not None and step > self._start_step:
            elapsed = time.perf_counter() - self._start
            rate = (step - self._start_step) / max(elapsed, 1e-9)
            eta = (self.total_steps - step) / rate
        return ProgressEvent(
            "training", step, self.total_steps, epoch, self.total_epochs, loss, self.smoothed_loss,
            learning_rates, rate, eta,
        )

    def phase_event(self, phase: Phase, step: int, epoch: int, message: str = "") -> ProgressEvent:
        return ProgressEvent(phase, step, self.total_steps, epoch, self.total_epochs, message=message)
