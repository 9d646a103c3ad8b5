"""The trainer service queues, validates and publishes, and never trains: it starts without the
model libraries (seconds of imports and hundreds of MB that only workers need)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "peft", "safetensors", "bitsandbytes", "scipy")


def test_the_trainer_service_imports_none_of_the_model_libraries():
    probe = f"import sys, services.trainer.server; print([m for m in {HEAVY!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
