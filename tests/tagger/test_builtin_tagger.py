"""The offline default tagger: NudeNet on real photos, pixel analysis on generated images."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.common.body_detector import BodyDetector, Detection
from services.tagger import body_tags
from services.tagger.builtin_tagger import ALL_TAGS, BuiltinTagger
from services.tagger.engine import TaggingEngine
from services.tagger.image_analysis import colour_name
from services.tagger.options import TaggingOptions
from services.tagger.tags import TagCategory
from tests.tagger.helpers import encode


@pytest.fixture(scope="module")
def engine(detector: BodyDetector) -> TaggingEngine:
    return TaggingEngine(BuiltinTagger(), detector=detector, screen=False)


def names_of(engine: TaggingEngine, data: bytes, options: TaggingOptions | None = None) -> list[str]:
    (result,) = engine.tag([data], options)
    assert result.ok, result.error
    return [tag.name for tag in result.tags]


def photo(samples: pathlib.Path, name: str) -> Image.Image:
    return Image.open(samples / name).convert("RGB")


@pytest.mark.parametrize(
    ("sample", "present", "absent"),
    [
        ("astronaut.png", {"1girl", "solo"}, {"no humans", "1boy", "greyscale", "multiple girls"}),
        ("camera.png", {"1boy", "solo", "greyscale", "monochrome"}, {"no humans", "1girl"}),
        ("chelsea.png", {"no humans"}, {"1girl", "solo", "greyscale"}),  # the cat's 0.12 "face" is ignored
        ("coffee.png", {"no humans"}, {"ass", "1girl", "solo"}),  # BUTTOCKS_EXPOSED 0.32 is ignored
        ("rocket.jpg", {"no humans"}, {"solo"}),
        ("motorcycle_left.png", {"no humans"}, {"solo"}),
    ],
)
def test_real_photos(engine: TaggingEngine, samples: pathlib.Path, sample: str, present: set, absent: set) -> None:
    names = names_of(engine, (samples / sample).read_bytes())
    assert names[0] == "general"  # the rating leads
    assert present <= set(names) and not absent & set(names), names


def test_counts_people(engine: TaggingEngine, samples: pathlib.Path) -> None:
    woman = np.asarray(photo(samples, "astronaut.png"))
    pair = np.hstack([woman, woman])
    names = names_of(engine, encode(Image.fromarray(pair)))
    assert {"2girls", "multiple girls"} <= set(names) and not {"solo", "1girl"} & set(names)
    names = names_of(engine, encode(Image.fromarray(np.vstack([pair, pair]))))
    assert {"4girls", "multiple girls"} <= set(names)


def test_person_tags_from_detections() -> None:
    def faces(*scores: float, label: str = "FACE_FEMALE") -> list[Detection]:
        return [Detection(label, s, (0, 0, 1, 1)) for s in scores]

    def names(detections: list[Detection]) -> dict[str, float]:
        return {t.name: t.score for t in body_tags.people_tags(detections)}

    assert names(faces(0.9, 0.8, 0.7, 0.6, 0.5, 0.46, 0.44)) == {"6+girls": 0.46, "multiple_girls": 0.46}
    assert names(faces(0.7) + faces(0.6, label="FACE_MALE")) == {"1girl": 0.7, "1boy": 0.6}
    assert names(faces(0.6, label="FACE_MALE")) == {"1boy": 0.6, "solo": 0.6}
    # Below the face threshold and no body part at 0.5: nobody, with the doubt in the score.
    assert names([*faces(0.44), Detection("BUTTOCKS_EXPOSED", 0.49, (0, 0, 1, 1))]) == {
        "no_humans": pytest.approx(0.51)
    }
    # A body part without a face: somebody is there, but nobody can be counted.
    assert names([Detection("FEET_EXPOSED", 0.7, (0, 0, 1, 1))]) == {}


def test_exposure_tags_and_rating_from_detections() -> None:
    found = [
        Detection("FEMALE_BREAST_EXPOSED", 0.8, (0, 0, 1, 1)),
        Detection("BELLY_EXPOSED", 0.45, (0, 0, 1, 1)),
        Detection("FEET_EXPOSED", 0.6, (0, 0, 1, 1)),
    ]
    assert [(t.name, t.score) for t in body_tags.exposure_tags(found)] == [
        ("breasts", 0.8), ("nipples", 0.8), ("barefoot", 0.6),
    ]  # fmt: skip
    assert body_tags.rating_from_detections(found).name == "questionable"
    explicit = body_tags.rating_from_detections([*found, Detection("ANUS_EXPOSED", 0.55, (0, 0, 1, 1))])
    assert (explicit.name, explicit.score, explicit.category) == ("explicit", 0.55, TagCategory.RATING)
    general = body_tags.rating_from_detections([Detection("BUTTOCKS_EXPOSED", 0.32, (0, 0, 1, 1))])
    assert (general.name, general.score) == ("general", pytest.approx(0.68))


def canvas(colour: tuple[int, int, int], size: tuple[int, int] = (600, 400)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).ellipse((200, 100, 400, 300), fill=(200, 30, 40))
    return image


@pytest.mark.parametrize(
    ("background", "tag"),
    [((255, 255, 255), "white background"), ((8, 8, 8), "black background"), ((30, 60, 200), "blue background")],
)
def test_plain_backgrounds(engine: TaggingEngine, background: tuple[int, int, int], tag: str) -> None:
    names = names_of(engine, encode(canvas(background), "JPEG", quality=80))
    assert {"simple background", tag} <= set(names) and "greyscale" not in names


def test_a_subject_crossing_one_edge_keeps_the_background_simple(engine: TaggingEngine) -> None:
    image = canvas((255, 255, 255))
    ImageDraw.Draw(image).rectangle((150, 200, 450, 400), fill=(20, 120, 20))  # touches the bottom edge
    assert {"simple background", "white background"} <= set(names_of(engine, encode(image)))
    ImageDraw.Draw(image).rectangle((0, 0, 600, 60), fill=(20, 120, 20))  # and now the top one too
    assert "simple background" not in names_of(engine, encode(image))


def test_busy_background_is_not_simple(engine: TaggingEngine) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    names = names_of(engine, encode(noise))
    assert not {"simple background", "greyscale", "monochrome"} & set(names)


def test_transparent_background(engine: TaggingEngine) -> None:
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((60, 60, 240, 240), fill=(200, 30, 40, 255))
    names = names_of(engine, encode(image))
    assert {"simple background", "transparent background"} <= set(names) and "white background" not in names


def test_greyscale_survives_jpeg_noise(engine: TaggingEngine, samples: pathlib.Path) -> None:
    grey_as_rgb_jpeg = encode(photo(samples, "camera.png"), "JPEG", quality=70)
    assert {"greyscale", "monochrome"} <= set(names_of(engine, grey_as_rgb_jpeg))


@pytest.mark.parametrize(
    ("size", "tag"), [((2048, 400), "wide image"), ((400, 2048), "tall image"), ((1000, 200), None)]
)
def test_wide_and_tall_images_follow_danbooru(engine: TaggingEngine, size: tuple[int, int], tag: str | None) -> None:
    names = set(names_of(engine, encode(Image.new("RGB", size, (90, 140, 60)))))
    assert (names & {"wide image", "tall image"}) == ({tag} if tag else set())


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((255, 255, 255), "white"), ((240, 238, 236), "white"), ((128, 128, 128), "grey"), ((20, 20, 20), "black"),
        ((220, 20, 30), "red"), ((255, 182, 193), "pink"), ((255, 140, 0), "orange"), ((240, 220, 40), "yellow"),
        ((40, 180, 60), "green"), ((0, 200, 200), "aqua"), ((30, 60, 200), "blue"), ((128, 40, 170), "purple"),
        ((110, 70, 30), "brown"),
    ],
)  # fmt: skip
def test_colour_names(rgb: tuple[int, int, int], name: str) -> None:
    assert colour_name(rgb) == name


def test_options_apply(engine: TaggingEngine, samples: pathlib.Path) -> None:
    data = (samples / "camera.png").read_bytes()
    # camera.png: greyscale/monochrome score 1.0, 1boy/solo 0.55 -> a 0.9 threshold keeps only the first two
    strict = TaggingOptions(general_threshold=0.9, include_rating=False)
    assert names_of(engine, data, strict) == ["monochrome", "greyscale"]
    plain = TaggingOptions(replace_underscores=False, undesired_tags=("monochrome",), max_tags=2)
    assert names_of(engine, data, plain) == ["general", "greyscale", "1boy"]


def test_documented_vocabulary_is_complete(engine: TaggingEngine, samples: pathlib.Path) -> None:
    readme = (pathlib.Path(__file__).parents[2] / "services" / "tagger" / "README.md").read_text()
    for raw in ALL_TAGS:
        assert f"`{raw.replace('_', ' ')}`" in readme, f"{raw} is produced but not documented"
