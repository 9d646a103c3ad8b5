"""Training speed: the engine's steps per CPU-second against a bare diffusers + peft loop on
tiny-sd15, and cached against uncached latents on tiny-sd15 and on the real SD1.5 architecture,
all measured in this run (the engine's own benchmark, each variant in its own process)."""

from __future__ import annotations

from services.trainer.engine import benchmark


def main() -> dict[str, float]:
    benchmark.main([])
    return {}


if __name__ == "__main__":
    main()
