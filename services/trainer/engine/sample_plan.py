"""Which samples an epoch holds and how they batch: kohya's DreamBooth dataset arithmetic.

- Each training image appears ``repeat`` times per epoch (its own repeat, else the global one).
- Regularization images are repeated until they match the number of training samples, walking
  the list round-robin exactly as kohya's ``DreamBoothDataset`` does.
- Samples are grouped by bucket; each bucket yields ``ceil(len / batch_size)`` batches, so one
  epoch has the sum of those, and one optimizer step takes ``gradient_accumulation_steps`` batches
  (the last, shorter group of an epoch still steps).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

from .buckets import BucketChoice, BucketRules
from .snapshot import DatasetSnapshot, SnapshotImage


@dataclass(frozen=True)
class PlannedImage:
    image: SnapshotImage
    is_regularization: bool
    repeats: int
    choice: BucketChoice


@dataclass(frozen=True)
class SamplePlan:
    images: tuple[PlannedImage, ...]
    batch_size: int
    gradient_accumulation_steps: int

    @property
    def buckets(self) -> dict[tuple[int, int], list[int]]:
        """Bucket -> indices into ``images``, one entry per repeat."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, planned in enumerate(self.images):
            groups[planned.choice.bucket].extend([index] * planned.repeats)
        return dict(sorted(groups.items()))

    @property
    def num_train_images(self) -> int:
        return sum(1 for p in self.images if not p.is_regularization)

    @property
    def num_reg_images(self) -> int:
        return sum(1 for p in self.images if p.is_regularization)

    @property
    def num_samples(self) -> int:
        return sum(p.repeats for p in self.images)

    @property
    def batches_per_epoch(self) -> int:
        return sum(math.ceil(len(indices) / self.batch_size) for indices in self.buckets.values())

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.gradient_accumulation_steps)

    def total_steps(self, epochs: int) -> int:
        return self.steps_per_epoch * epochs

    def epoch_batches(self, rng: random.Random) -> list[list[PlannedImage]]:
        """One epoch's batches: each bucket shuffled, then the batch order shuffled (kohya)."""
        batches: list[list[PlannedImage]] = []
        for indices in self.buckets.values():
            shuffled = indices[:]
            rng.shuffle(shuffled)
            for start in range(0, len(shuffled), self.batch_size):
                batches.append([self.images[i] for i in shuffled[start : start + self.batch_size]])
        rng.shuffle(batches)
        return batches


def regularization_repeats(train_samples: int, reg_images: list[SnapshotImage], default: int) -> list[int]:
    """Repeats per regularization image (0: not used), kohya's balancing loop verbatim."""
    repeats = [0] * len(reg_images)
    if not reg_images:
        return repeats
    total = 0
    first_pass = True
    while total < train_samples:
        for index, image in enumerate(reg_images):
            if first_pass:
                repeats[index] = image.repeat or default
                total += repeats[index]
            else:
                repeats[index] += 1
                total += 1
            if total >= train_samples:
                break
        first_pass = False
    return repeats


def plan_samples(
    snapshot: DatasetSnapshot,
    rules: BucketRules,
    default_repeat: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    enable_bucket: bool = True,
) -> SamplePlan:
    planned: list[PlannedImage] = []
    for image in snapshot.training_images:
        planned.append(PlannedImage(image, False, image.repeat or default_repeat, _choose(image, rules, enable_bucket)))
    train_samples = sum(p.repeats for p in planned)
    reg_images = snapshot.regularization_images
    for image, repeats in zip(reg_images, regularization_repeats(train_samples, reg_images, 1), strict=True):
        if repeats:
            planned.append(PlannedImage(image, True, repeats, _choose(image, rules, enable_bucket)))
    return SamplePlan(tuple(planned), batch_size, gradient_accumulation_steps)


def _choose(image: SnapshotImage, rules: BucketRules, enable_bucket: bool) -> BucketChoice:
    width, height = image.source_size
    if image.crop is not None and max(width, height) <= rules.max_size:
        # Cropped by the dataset service to its target size: trained exactly as it is.
        return BucketChoice((width, height), (width, height))
    # A crop with a side past the largest bucket (a 512 px crop trained at 128 px) is bucketed
    # as any image: scaled down to the job's resolution.
    if not enable_bucket:
        # kohya without buckets: every image resized to cover the resolution and centre-cropped.
        target = rules.resolution
        scale = max(target[0] / width, target[1] / height)
        return BucketChoice(target, (int(width * scale + 0.5), int(height * scale + 0.5)))
    return rules.select(width, height)
