"""How tagging uses the CPU: ONNX Runtime session options, thread counts and batch size.

The choices, and why (measured numbers in README.md):
- One inference at a time, using every core (`intra_op_threads` = usable cores). A WD model is
  a single chain of large ops; parallelism inside each op (intra-op) is what speeds it up, so
  `inter_op_threads` = 1 with sequential execution. Two inferences at once would only fight
  over the same cores, so the tagger serialises them.
- Intra-op threads do not spin-wait between ops (`session.intra_op.allow_spinning` = 0).
  Spinning trades CPU for a few microseconds of wake-up latency; here decoding and
  preprocessing run on the same cores at the same time and need that CPU. Measured on the
  ViT-B/16@448 stand-in, 2 cores, interleaved runs: 0.59 img/s without spinning, 0.52 with,
  0.52 with ONNX Runtime's default options.
- Decode, detection and preprocessing run in a thread pool (one thread per core) beside
  inference (PIL, OpenCV and ONNX Runtime release the GIL), so a batch is prepared while the
  previous one is inferred. The pool only runs one batch ahead, so with a costly model its
  threads mostly wait and take little CPU from inference; with a cheap model (or the built-in
  tagger, whose work is all preparation) they use every core.
- Batches of 4: v3 models take a dynamic batch, which amortises per-run overhead on small
  models; a ViT-B at 448 px is memory-bound and gains nothing from larger batches (8 was
  slower than 1-4 here). v2 models have a fixed batch of 1 and run image by image.
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

    batch_size: int = Field(4, ge=1, le=256, description="images per inference when the model allows")
    intra_op_threads: int | None = Field(None, ge=1, description="threads per inference; None: all cores")
    prepare_workers: int | None = Field(None, ge=1, description="decode/detect/preprocess threads; None: all cores")
    allow_spinning: bool = Field(False, description="let idle ONNX Runtime threads spin-wait")

    def resolved_intra_op_threads(self) -> int:
        return self.intra_op_threads or usable_cpu_count()

    def resolved_prepare_workers(self) -> int:
        return self.prepare_workers or usable_cpu_count()


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
