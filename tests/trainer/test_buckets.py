"""Aspect-ratio buckets with kohya's rules."""

from __future__ import annotations

from services.trainer.engine.buckets import BucketRules, fit_to_bucket, make_bucket_resolutions


def test_bucket_list_at_512_is_kohyas() -> None:
    # Derived by hand from kohya's make_bucket_resolutions: equal area to 512x512 in 64-px steps.
    landscape = [(512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256),
                 (960, 256), (1024, 256)]
    expected = sorted(set(landscape + [(h, w) for w, h in landscape]))
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == expected


def test_image_goes_to_nearest_aspect_bucket_and_covers_it() -> None:
    rules = BucketRules((512, 512), 256, 1024, 64)
    choice = rules.select(1200, 900)  # 4:3; nearest bucket 576x448 (9:7)
    assert choice.bucket == (576, 448)
    assert choice.resized == (597, 448)  # scaled so the height fits, width overhangs
    portrait = rules.select(900, 1600)
    assert portrait.bucket == (384, 640)


def test_no_upscale_keeps_small_images_small() -> None:
    rules = BucketRules((512, 512), 256, 1024, 64, no_upscale=True)
    small = rules.select(300, 200)
    assert small.bucket == (256, 192) and small.resized == (300, 200)
    upscaling = BucketRules((512, 512), 256, 1024, 64).select(300, 200)
    assert upscaling.resized[0] > 300  # the default scales it up to a full-area bucket


def test_fit_to_bucket_centre_crops_the_overhang(make_image) -> None:
    rules = BucketRules((64, 64), 32, 128, 32)
    image = make_image(128, 64, 3)
    choice = rules.select(128, 64)
    fitted, (top, left) = fit_to_bucket(image, choice)
    assert fitted.size == choice.bucket
    expected_left = (choice.resized[0] - choice.bucket[0]) // 2
    assert (top, left) == ((choice.resized[1] - choice.bucket[1]) // 2, expected_left)
