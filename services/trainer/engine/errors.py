"""Errors the engine raises, shaped so a gRPC layer can map them to BadRequest field violations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidTrainingConfig(ValueError):
    """The configuration can't train; ``violations`` holds every problem, not just the first."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = list(violations)
        lines = "\n  - ".join(str(v) for v in self.violations)
        super().__init__(f"{len(self.violations)} problem(s) with the training configuration:\n  - {lines}")


class BaseModelUnavailable(LookupError):
    """A catalog model whose weights were never imported on this machine."""


class TrainingCancelled(RuntimeError):
    """Raised out of :func:`train` when the cancel check asked to stop; ``step`` is the last one done."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training cancelled after step {step}")
        self.step = step


class InvalidGenerationRequest(ValueError):
    """A test-generation request that can't run; ``violations`` holds every problem."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = list(violations)
        lines = "\n  - ".join(str(v) for v in self.violations)
        super().__init__(f"{len(self.violations)} problem(s) with the generation request:\n  - {lines}")


class LoraIncompatible(ValueError):
    """A LoRA file that can't be applied to the chosen base model as a whole (another family, a
    network type other than LoRA, modules the model doesn't have, or not a safetensors file)."""


class InvalidPublishRequest(ValueError):
    """Publish metadata that can't be written; ``violations`` holds every problem."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = list(violations)
        lines = "\n  - ".join(str(v) for v in self.violations)
        super().__init__(f"{len(self.violations)} problem(s) with the publish request:\n  - {lines}")
