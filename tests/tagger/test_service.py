"""The TaggerService over a real gRPC channel, reading images from a real S3 server."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from kiln.v1 import tagger_pb2 as pb
from kiln.v1 import tagger_pb2_grpc
from kiln.v1 import tagging_types_pb2 as ttpb
from services.common.errors import status_details
from services.common.internal_client import internal_channel
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.ports import free_port
from services.common.settings import ServerSettings
from services.tagger.registry import TaggerRegistry
from services.tagger.server import TaggerService, running_tagger_service
from services.tagger.settings import TaggerSettings
from services.tagger.wd_tagger import MODEL_FILE, TAGS_FILE
from tests.servers import TEST_AUTH, TEST_INTERNAL_TOKEN
from tests.tagger.helpers import solid_png

#                 general sens. quest. expl. 1girl long_hair ^_^  o_o  blue_sky guro miku rin
SAFE_BIAS = [0.80, 0.10, 0.05, 0.02, 0.90, 0.60, 0.40, 0.10, 0.10, 0.01, 0.90, 0.10]
EXPLICIT_BIAS = [0.05, 0.10, 0.20, 0.80, 0.90, 0.60, 0.10, 0.10, 0.10, 0.01, 0.10, 0.10]
MakeModel = Callable[..., pathlib.Path]


@pytest.fixture(scope="module")
def taggers_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("taggers")


@pytest.fixture(scope="module")
def service(aio: LoopThread, store: ObjectStore, taggers_dir: pathlib.Path) -> Iterator[TaggerService]:
    settings = TaggerSettings(
        tagger_dir=taggers_dir, server=ServerSettings(port=0, shutdown_grace=1.0), json_logs=False,
        internal_auth=TEST_AUTH,
    )
    with aio.context(running_tagger_service(settings, store)) as running:
        yield running


@pytest.fixture(scope="module")
def stub(service: TaggerService) -> Iterator[tagger_pb2_grpc.TaggerServiceStub]:
    with internal_channel(service.address, TEST_AUTH) as channel:
        yield tagger_pb2_grpc.TaggerServiceStub(channel)


@pytest.fixture
def wd_installed(taggers_dir: pathlib.Path, make_wd_model: MakeModel) -> Iterator[Callable[..., None]]:
    """Install WD models into the running service's directory; all removed afterwards."""
    registry = TaggerRegistry(taggers_dir)
    installed: set[str] = set()

    def install(name: str, bias: list[float], replace: bool = False) -> None:
        model_dir = make_wd_model(bias)
        registry.install(name, model_dir / MODEL_FILE, model_dir / TAGS_FILE, replace=replace)
        installed.add(name)

    yield install
    for name in installed:
        registry.remove(name)


def failure(call: Callable[..., object], request: object) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request)
    info, violations = status_details(raised.value)
    assert info is not None and info.domain == "kiln.dev"
    return raised.value.code(), info.reason, [v.field for v in violations]


def names(result: pb.ImageTagging) -> list[str]:
    return [tag.name for tag in result.tags]


def test_health_and_reflection(service: TaggerService) -> None:
    with internal_channel(service.address, TEST_AUTH) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="kiln.v1.TaggerService")
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert "kiln.v1.TaggerService" in set(ProtoReflectionDescriptorDatabase(channel).get_services())


def test_builtin_tagger_works_with_nothing_installed(stub, samples: pathlib.Path, store: ObjectStore) -> None:
    listed = stub.ListTaggers(pb.ListTaggersRequest())
    assert [(t.name, t.kind, t.preferred) for t in listed.taggers] == [
        ("taggers/builtin", pb.TAGGER_KIND_BUILTIN, True)
    ]
    store.put_bytes("datasets/d1/images/i1/original", (samples / "astronaut.png").read_bytes())
    response = stub.TagImages(
        pb.TagImagesRequest(
            images=[
                pb.ImageSource(object_key="datasets/d1/images/i1/original"),
                pb.ImageSource(content=(samples / "camera.png").read_bytes()),
            ]
        )
    )
    assert response.tagger == "taggers/builtin"
    woman, man = response.results
    assert (woman.index, man.index) == (0, 1)
    assert {"1girl", "solo"} <= set(names(woman)) and {"1boy", "greyscale"} <= set(names(man))
    assert woman.tags[0].category == ttpb.TAG_CATEGORY_RATING and woman.tags[0].name == "general"
    assert woman.verdict.decision == ttpb.MODERATION_DECISION_ALLOW and not woman.error_reason


def test_bad_images_fail_alone(stub) -> None:
    response = stub.TagImages(
        pb.TagImagesRequest(
            images=[
                pb.ImageSource(object_key="datasets/d1/images/missing/original"),
                pb.ImageSource(content=b"not an image"),
                pb.ImageSource(content=solid_png((255, 255, 255), (300, 300))),
            ]
        )
    )
    missing, garbage, white = response.results
    assert (missing.error_reason, missing.error_message) == (
        "IMAGE_NOT_FOUND",
        "object 'datasets/d1/images/missing/original' does not exist",
    )
    assert garbage.error_reason == "IMAGE_UNDECODABLE" and not garbage.tags and not garbage.HasField("verdict")
    assert {"no humans", "simple background", "white background"} <= set(names(white))


def test_installed_wd_model_takes_over_and_options_apply(stub, wd_installed) -> None:
    wd_installed("wd-test", SAFE_BIAS)
    listed = stub.ListTaggers(pb.ListTaggersRequest())
    assert [(t.name, t.preferred) for t in listed.taggers] == [("taggers/builtin", False), ("taggers/wd-test", True)]
    wd = stub.GetTagger(pb.GetTaggerRequest(name="taggers/wd-test"))
    assert (wd.kind, wd.tag_count, wd.input_size, wd.fixed_batch_size) == (pb.TAGGER_KIND_WD14, 12, 32, 0)
    assert len(wd.model_sha256) == 64 and wd.install_time.seconds > 0

    image = pb.ImageSource(content=solid_png((10, 20, 30)))
    (default,) = stub.TagImages(pb.TagImagesRequest(images=[image])).results
    assert names(default) == ["general", "hatsune miku", "1girl", "long hair", "^_^"]
    assert [round(t.score, 2) for t in default.tags] == [0.8, 0.9, 0.9, 0.6, 0.4]
    assert {r.name: round(r.score, 2) for r in default.ratings} == {
        "general": 0.8, "sensitive": 0.1, "questionable": 0.05, "explicit": 0.02,
    }  # fmt: skip

    options = ttpb.TaggingOptions(
        general_threshold=0.5,
        include_rating=False,
        replace_underscores=False,
        character_first=False,
        undesired_tags=["1girl"],
    )
    (custom,) = stub.TagImages(pb.TagImagesRequest(tagger="taggers/wd-test", images=[image], options=options)).results
    assert names(custom) == ["hatsune_miku", "long_hair"]
    (builtin,) = stub.TagImages(pb.TagImagesRequest(tagger="taggers/builtin", images=[image])).results
    assert "no humans" in names(builtin)


def test_wd_rating_blocks_and_screening_can_be_skipped(stub, wd_installed) -> None:
    wd_installed("wd-explicit", EXPLICIT_BIAS)
    request = pb.TagImagesRequest(tagger="taggers/wd-explicit", images=[pb.ImageSource(content=solid_png((9, 9, 9)))])
    (result,) = stub.TagImages(request).results
    assert result.verdict.decision == ttpb.MODERATION_DECISION_BLOCK
    reason = result.verdict.findings[0]
    assert (reason.source, reason.label, round(reason.score, 2), reason.decision) == (
        ttpb.MODERATION_SIGNAL_SOURCE_RATING, "explicit", 0.8, ttpb.MODERATION_DECISION_BLOCK,
    )  # fmt: skip
    request.skip_screening = True
    (unscreened,) = stub.TagImages(request).results
    assert not unscreened.HasField("verdict") and names(unscreened)[0] == "explicit"


def test_a_replaced_model_is_picked_up(stub, wd_installed) -> None:
    request = pb.TagImagesRequest(tagger="taggers/wd-swap", images=[pb.ImageSource(content=solid_png((1, 2, 3)))])
    wd_installed("wd-swap", SAFE_BIAS)
    assert stub.TagImages(request).results[0].tags[0].name == "general"
    wd_installed("wd-swap", EXPLICIT_BIAS, replace=True)
    assert stub.TagImages(request).results[0].tags[0].name == "explicit"


def test_pagination(stub, wd_installed) -> None:
    wd_installed("wd-a", SAFE_BIAS)
    wd_installed("wd-b", SAFE_BIAS)
    seen, token = [], ""
    while True:
        page = stub.ListTaggers(pb.ListTaggersRequest(page_size=2, page_token=token))
        assert len(page.taggers) <= 2
        seen += [t.name for t in page.taggers]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["taggers/builtin", "taggers/wd-a", "taggers/wd-b"]
    code, _, fields = failure(stub.ListTaggers, pb.ListTaggersRequest(page_token="garbage"))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


@pytest.mark.parametrize(
    ("request_message", "code", "reason", "fields"),
    [
        (pb.TagImagesRequest(), grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_COUNT", ["images"]),
        (
            pb.TagImagesRequest(images=[pb.ImageSource(content=b"x")] * 33),
            grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_COUNT", ["images"],
        ),
        (
            pb.TagImagesRequest(
                images=[
                    pb.ImageSource(),
                    pb.ImageSource(object_key="trainingJobs/j/epochs/1/lora.safetensors"),
                    pb.ImageSource(object_key="datasets/../trainingJobs/x"),
                    pb.ImageSource(content=b""),
                ]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            ["images[0]", "images[1].object_key", "images[2].object_key", "images[3].content"],
        ),
        (
            pb.TagImagesRequest(
                images=[pb.ImageSource(content=b"x")],
                options=ttpb.TaggingOptions(general_threshold=1.5, max_tags=-1, undesired_tags=[" "]),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            ["options.general_threshold", "options.max_tags", "options.undesired_tags[0]"],
        ),
        (
            pb.TagImagesRequest(tagger="taggers/nope", images=[pb.ImageSource(content=b"x")]),
            grpc.StatusCode.NOT_FOUND, "NOT_FOUND", [],
        ),
        (
            pb.TagImagesRequest(tagger="wd-test", images=[pb.ImageSource(content=b"x")]),
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME", ["tagger"],
        ),
    ],
)  # fmt: skip
def test_bad_requests_get_precise_errors(stub, request_message, code, reason, fields) -> None:
    assert failure(stub.TagImages, request_message) == (code, reason, fields)


def test_unknown_and_malformed_tagger_names(stub) -> None:
    assert failure(stub.GetTagger, pb.GetTaggerRequest(name="taggers/nope")) == (
        grpc.StatusCode.NOT_FOUND, "NOT_FOUND", [],
    )  # fmt: skip
    assert failure(stub.GetTagger, pb.GetTaggerRequest(name="taggers/../etc")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME", ["name"],
    )  # fmt: skip


def test_service_without_a_store_accepts_inline_images_only(aio: LoopThread, tmp_path: pathlib.Path) -> None:
    settings = TaggerSettings(tagger_dir=tmp_path, server=ServerSettings(port=0, shutdown_grace=1.0), json_logs=False,
                              internal_auth=TEST_AUTH)
    with aio.context(running_tagger_service(settings, None)) as running, \
            internal_channel(running.address, TEST_AUTH) as ch:
        stub = tagger_pb2_grpc.TaggerServiceStub(ch)
        keyed = pb.TagImagesRequest(images=[pb.ImageSource(object_key="datasets/d/images/i/original")])
        code, _, fields = failure(stub.TagImages, keyed)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["images[0].object_key"])
        inline = pb.TagImagesRequest(images=[pb.ImageSource(content=solid_png((0, 0, 0), (200, 200)))])
        assert "black background" in names(stub.TagImages(inline).results[0])



def test_process_serves_and_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_DATA_DIR=str(tmp_path), KILN_SERVER__PORT=str(port), KILN_JSON_LOGS="true",
               KILN_INTERNAL_AUTH__TOKEN=TEST_INTERNAL_TOKEN)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.tagger", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        with internal_channel(f"127.0.0.1:{port}", TEST_AUTH) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = tagger_pb2_grpc.TaggerServiceStub(channel)
            assert [t.name for t in stub.ListTaggers(pb.ListTaggersRequest()).taggers] == ["taggers/builtin"]
            request = pb.TagImagesRequest(images=[pb.ImageSource(content=solid_png((255, 255, 255), (100, 100)))])
            assert "white background" in names(stub.TagImages(request).results[0])
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr[-2000:]
        assert "termination signal received" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
