"""Total steps exactly as kohya counts them, reported before training and then taken."""

from __future__ import annotations

import math

from services.trainer.engine.buckets import BucketRules
from services.trainer.engine.estimate import estimate_training
from services.trainer.engine.sample_plan import plan_samples, regularization_repeats

RULES = BucketRules((64, 64), 32, 128, 32)


def test_seed_formula_is_the_batch_one_case(make_dataset, fast_config, model_store) -> None:
    dataset = make_dataset(count=5, repeat=None, default_repeat=3)
    config = fast_config(batch_size=1, epochs=4)
    assert estimate_training(config, dataset.snapshot, model_store).total_steps == 5 * 3 * 4


def test_per_image_repeats_override_the_global_repeat(make_dataset, fast_config, model_store) -> None:
    dataset = make_dataset(count=3, repeat=None, default_repeat=2)
    images = list(dataset.snapshot.images)
    from dataclasses import replace

    images[0] = replace(images[0], repeat=5)  # its own repeat; the others fall back
    dataset.snapshot = replace(dataset.snapshot, images=tuple(images))
    estimate = estimate_training(fast_config(batch_size=1, repeat=4), dataset.snapshot, model_store)
    assert estimate.samples_per_epoch == 5 + 4 + 4
    # Without a configured repeat the snapshot's default applies.
    assert estimate_training(fast_config(batch_size=1), dataset.snapshot, model_store).samples_per_epoch == 5 + 2 + 2


def test_batches_are_counted_per_bucket_with_ceil(make_dataset) -> None:
    # 3 square and 2 wide images, repeat 3: buckets of 9 and 6 samples.
    dataset = make_dataset(count=5, sizes=[(64, 64), (64, 64), (64, 64), (128, 32), (128, 32)], repeat=3)
    plan = plan_samples(dataset.snapshot, RULES, 1, batch_size=4, gradient_accumulation_steps=1)
    assert {bucket: len(s) for bucket, s in plan.buckets.items()} == {(64, 64): 9, (128, 32): 6}
    assert plan.batches_per_epoch == math.ceil(9 / 4) + math.ceil(6 / 4) == 5
    # One mixed bucket would have made ceil(15 / 4) = 4: per-bucket counting is what differs.
    accumulated = plan_samples(dataset.snapshot, RULES, 1, batch_size=4, gradient_accumulation_steps=2)
    assert accumulated.steps_per_epoch == 3 and accumulated.total_steps(epochs=2) == 6


def test_crops_train_at_their_size_unless_past_the_largest_bucket(make_dataset) -> None:
    # RULES: resolution 64, buckets up to 128 px. A 96x64 crop is trained as it is.
    fitting = make_dataset(count=1, sizes=[(300, 200)], crop_to=(96, 64))
    plan = plan_samples(fitting.snapshot, RULES, 1, batch_size=1, gradient_accumulation_steps=1)
    assert list(plan.buckets) == [(96, 64)]
    # A 512x512 crop (the dataset's SD1.5 size) for a job at 64 px: scaled down to the resolution.
    large = make_dataset(count=1, sizes=[(640, 480)], crop_to=(512, 512))
    plan = plan_samples(large.snapshot, RULES, 1, batch_size=1, gradient_accumulation_steps=1)
    assert list(plan.buckets) == [(64, 64)]
    assert plan.images[0].choice.resized == (64, 64)


def test_regularization_is_balanced_like_kohya(make_dataset) -> None:
    dataset = make_dataset(count=2, repeat=5, reg_count=3, reg_repeat=1)
    reg = dataset.snapshot.regularization_images
    # 10 training samples: the first pass gives 1 each (3), then round-robin +1 until 10.
    assert regularization_repeats(10, reg, 1) == [4, 3, 3]
    # Fewer training samples than reg images: the walk stops early, unused images get 0.
    assert regularization_repeats(2, reg, 1) == [1, 1, 0]
    plan = plan_samples(dataset.snapshot, RULES, 1, batch_size=1, gradient_accumulation_steps=1)
    assert plan.num_samples == 20 and plan.batches_per_epoch == 20


def test_run_takes_exactly_the_estimated_steps(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=3, sizes=[(64, 64), (96, 64)], repeat=3, reg_count=1)
    config = fast_config(epochs=2, batch_size=2, gradient_accumulation_steps=2, bucket_reso_steps=32,
                         min_bucket_reso=32)
    trained = run_training(config, dataset)
    steps = [e.step for e in trained.events if e.phase == "training"]
    assert steps == list(range(1, trained.result.estimate.total_steps + 1))
    assert trained.result.final_step == trained.result.estimate.total_steps
