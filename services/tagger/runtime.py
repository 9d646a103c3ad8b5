"""How tagging uses the CPU: ONNX Runtime session options, thread counts and batch size.

The choices, and why (measured numbers in README.md):
- One inference at a time, using every core (`intra_op_threads` = usable cores). A WD model is
  a single chain of large ops; parallelism inside each op (intra-op) is what speeds it up, so
  `inter_op_threads` = 1 with sequential execution. Two inferences at once would only fight
  over the same cores, so the tagger serialises them.
- Intra-op threads do not spin-wait between ops (`session.intra_op.allow_spinning` = 0).
  Spinning trades CPU for a few microseconds of wake-up latency; here decoding and
  preprocessing run on the same cores at the same time and need that CPU.
- Decode and preprocessing run in a small thread pool beside inference (PIL and ONNX Runtime
  release the GIL), so a batch is prepared while the previous one is inferred.
- Batches: v3 models take a dynamic batch; batching amortises per-run overhead (a few % on a
  ViT-B, much more on small models). v2 models have a fixed batch of 1 and run image by image.
"""

from __future__ import annotations

import os
import pathlib

import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field


def usable_cpu_count() -> int:
    """Cores this process may run on (a container's CPU set, not the host's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not available on macOS
        return max(1, os.cpu_count() or 1)


class RuntimeOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(8, ge=1, le=256, description="images per inference when the model allows")
    intra_op_threads: int | None = Field(None, ge=1, description="threads per inference; None: all cores")
    prepare_workers: int | None = Field(
        None, ge=1, description="decode/preprocess threads; None: chosen by the tagger kind"
    )
    allow_spinning: bool = Field(False, description="let idle ONNX Runtime threads spin-wait")

    def resolved_intra_op_threads(self) -> int:
        return self.intra_op_threads or usable_cpu_count()


def session_options(runtime: RuntimeOptions) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.resolved_intra_op_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if runtime.allow_spinning else "0")
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise
    return options


def open_session(model_path: pathlib.Path, runtime: RuntimeOptions) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_path), session_options(runtime), providers=["CPUExecutionProvider"])
