"""Training speed: the engine's steps per CPU-second against a bare diffusers + peft loop on
tiny-sd15, and cached against uncached latents on tiny-sd15 and on the real SD1.5 architecture,
all measured in this run (the engine's own benchmark, each variant in its own process)."""

from __future__ import annotations

from collections.abc import Sequence

from services.trainer.engine import benchmark


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    return benchmark.measure_all(benchmark.build_parser().parse_args(list(argv or [])))


if __name__ == "__main__":
    main()
