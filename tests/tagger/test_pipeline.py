"""Overlapping preparation with batched inference: ordering, failures, overlap and memory bound."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest

from services.tagger.pipeline import overlapped_batches


def run(items, prepare, run_batch, batch_size=4, workers=2) -> dict[int, object]:
    return dict(overlapped_batches(items, prepare, run_batch, batch_size=batch_size, workers=workers))


def test_every_item_comes_back_once_in_batches_of_the_requested_size() -> None:
    sizes: list[int] = []

    def run_batch(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        return [value + 1 for value in batch]

    assert run(range(10), lambda x: x * 10, run_batch) == {i: i * 10 + 1 for i in range(10)}
    assert sizes == [4, 4, 2]


def test_preparation_overlaps_the_running_batch() -> None:
    second_batch_started = threading.Event()
    overlapped: list[bool] = []

    def prepare(x: int) -> int:
        if x == 2:  # first item of the second batch
            second_batch_started.set()
        return x

    def run_batch(batch: list[int]) -> list[int]:
        if batch[0] == 0:
            # Without overlap nothing prepares item 2 until this returns, and the wait times out.
            overlapped.append(second_batch_started.wait(timeout=10))
        return batch

    run(range(4), prepare, run_batch, batch_size=2, workers=1)
    assert overlapped == [True]


def test_preparation_runs_in_workers_and_batches_in_the_caller() -> None:
    prepared_in, ran_in = set(), set()

    def prepare(x: int) -> int:
        prepared_in.add(threading.current_thread().name)
        return x

    def run_batch(batch: list[int]) -> list[int]:
        ran_in.add(threading.current_thread().name)
        return batch

    run(range(6), prepare, run_batch)
    assert ran_in == {threading.current_thread().name}
    assert prepared_in and all(name.startswith("tagger-prepare") for name in prepared_in)


def test_a_failed_preparation_fails_only_its_item() -> None:
    sizes: list[int] = []

    def prepare(x: int) -> int:
        if x == 3:
            raise ValueError("bad item 3")
        return x

    results = run(range(6), prepare, lambda batch: sizes.append(len(batch)) or batch, batch_size=2)
    assert isinstance(results.pop(3), ValueError)
    assert results == {0: 0, 1: 1, 2: 2, 4: 4, 5: 5}
    assert sum(sizes) == 5


def test_a_failed_batch_fails_its_items_only() -> None:
    def run_batch(batch: list[int]) -> list[int]:
        if 2 in batch:
            raise RuntimeError("inference failed")
        return batch

    results = run(range(6), lambda x: x, run_batch, batch_size=2)
    assert [i for i, r in sorted(results.items()) if isinstance(r, RuntimeError)] == [2, 3]
    assert [results[i] for i in (0, 1, 4, 5)] == [0, 1, 4, 5]


def test_input_is_consumed_lazily_within_a_bounded_window() -> None:
    pulled = itertools.count()

    def endless() -> Iterator[int]:
        for value in itertools.count():
            next(pulled)
            yield value

    results = overlapped_batches(endless(), lambda x: x, lambda batch: batch, batch_size=4, workers=2)
    first = next(results)
    results.close()  # the consumer stops early: pending work is cancelled, nothing hangs
    assert first == (0, 0)
    assert next(pulled) <= 4 + 2 + 4  # one batch in hand plus the window ahead of it


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(overlapped_batches([1], lambda x: x, lambda b: b, batch_size=0, workers=1))
