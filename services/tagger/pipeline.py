"""Overlap per-item preparation (thread pool) with batched work (the calling thread).

While the caller runs batch k, the pool is already preparing batch k+1: the window of
submitted-but-unconsumed items is one batch plus one item per worker, which keeps every worker
busy without holding more than about two batches of prepared tensors in memory.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")
Output = TypeVar("Output")


def overlapped_batches(
    items: Iterable[Item],
    prepare: Callable[[Item], Prepared],
    run_batch: Callable[[list[Prepared]], list[Output]],
    *,
    batch_size: int,
    workers: int,
) -> Iterator[tuple[int, Output | Exception]]:
    """Yield `(index, output)` for every item, or `(index, exception)` when preparing it or
    running its batch failed; one bad item never fails the others in preparation.

    Failures are yielded as soon as they are known and outputs when their batch completes, so
    indexes come out of order; callers that need input order sort by index.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError("batch_size and workers must be at least 1")
    window = batch_size + workers
    numbered = enumerate(items)
    pending: deque[tuple[int, Future[Prepared]]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tagger-prepare") as pool:

        def top_up() -> None:
            while len(pending) < window:
                nxt = next(numbered, None)
                if nxt is None:
                    return
                # The caller's context goes along: the image reads inside keep its deadline.
                pending.append((nxt[0], pool.submit(contextvars.copy_context().run, prepare, nxt[1])))

        try:
            top_up()
            batch: list[tuple[int, Prepared]] = []
            while pending:
                index, future = pending.popleft()
                top_up()
                try:
                    batch.append((index, future.result()))
                except Exception as error:
                    yield index, error
                if len(batch) == batch_size or (not pending and batch):
                    yield from _run(batch, run_batch)
                    batch = []
        finally:
            # A consumer that stops early must not wait for work nobody will read.
            for _, future in pending:
                future.cancel()


def _run(
    batch: list[tuple[int, Prepared]], run_batch: Callable[[list[Prepared]], list[Output]]
) -> Iterator[tuple[int, Output | Exception]]:
    indexes = [index for index, _ in batch]
    try:
        outputs = run_batch([prepared for _, prepared in batch])
        if len(outputs) != len(batch):
            raise RuntimeError(f"batch of {len(batch)} produced {len(outputs)} outputs")
    except Exception as error:
        for index in indexes:
            yield index, error
        return
    yield from zip(indexes, outputs, strict=True)
