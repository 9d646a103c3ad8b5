"""The TaggerService gRPC handlers.

Blocking work never runs on the event loop: registry reads and model loads in the default
pool, tagging in a pool of one thread — each batch already uses every core (see runtime.py),
so two at once would only slow both down. Object-store reads happen inside the tagging
pipeline's workers, overlapped with inference.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from kiln.v1 import tagger_pb2 as pb
from kiln.v1 import tagger_pb2_grpc
from services.common.body_detector import BodyDetector
from services.common.call_context import current_tenant
from services.common.dependencies import CallObserver
from services.common.errors import FieldViolation, failed_precondition, invalid, invalid_field, not_found, unary_errors
from services.common.objectstore import ObjectNotFound, ObjectStore
from services.common.outages import OBJECT_STORE, failed_dependency
from services.common.pagination import PageTokens, page_size
from services.tagger import convert
from services.tagger.engine import TaggingEngine
from services.tagger.engine_cache import EngineCache
from services.tagger.errors import ImageUnavailable, InvalidTaggerFiles, TaggerNotFound
from services.tagger.moderation import ModerationPolicy
from services.tagger.registry import TaggerRegistry
from services.tagger.settings import TaggerSettings

log = logging.getLogger(__name__)
LIST_QUERY = "taggers"


class TaggerServicer(tagger_pb2_grpc.TaggerServiceServicer):
    def __init__(
        self,
        registry: TaggerRegistry,
        store: ObjectStore | None,
        settings: TaggerSettings,
        detector: BodyDetector,
        policy: ModerationPolicy,
        page_tokens: PageTokens,
        observer: CallObserver | None = None,
    ) -> None:
        self._registry = registry
        self._observer = observer
        self._page_tokens = page_tokens
        self._store = store
        self._settings = settings
        self._engines = EngineCache(registry, detector, policy, settings.tagger_runtime)
        self._tagging_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagger-run")

    def close(self) -> None:
        self._tagging_pool.shutdown(wait=False, cancel_futures=True)

    def preferred_tagger(self) -> str:
        """Blocking: reads the registry."""
        try:
            return self._registry.preferred(self._settings.tagger_default)
        except TaggerNotFound:
            raise failed_precondition(
                f"the configured default tagger {self._settings.tagger_default!r} is not installed; "
                "install it or change KILN_TAGGER_DEFAULT",
                "DEFAULT_TAGGER_MISSING",
            ) from None

    def load_engine(self, tagger: str) -> TaggingEngine:
        """Blocking: may load a model."""
        try:
            return self._engines.get(tagger)
        except TaggerNotFound:
            raise not_found(convert.resource_name(tagger), "tagger") from None
        except InvalidTaggerFiles as error:
            log.error("installed tagger unusable", extra={"fields": {"tagger": tagger, "error": str(error)}})
            raise failed_precondition(
                f"tagger {tagger!r} is installed but unusable: {error}", "TAGGER_UNUSABLE"
            ) from None

    # ---- taggers ----------------------------------------------------------------------------------------------

    @unary_errors
    async def ListTaggers(
        self, request: pb.ListTaggersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTaggersResponse:
        size = page_size(request.page_size, 50, 100)
        after = self._page_tokens.decode(request.page_token, LIST_QUERY)

        def read() -> pb.ListTaggersResponse:
            preferred = self.preferred_tagger()
            listed = self._registry.list()
            position = 0
            if after:
                names = [t.name for t in listed]
                position = names.index(after[0]) + 1 if after[0] in names else len(names)
            page = listed[position : position + size]
            more = position + size < len(listed)
            return pb.ListTaggersResponse(
                taggers=[convert.tagger_message(t, preferred) for t in page],
                next_page_token=self._page_tokens.encode([page[-1].name], LIST_QUERY) if more and page else "",
            )

        return await asyncio.to_thread(read)

    @unary_errors
    async def GetTagger(self, request: pb.GetTaggerRequest, context: grpc.aio.ServicerContext) -> pb.Tagger:
        tagger = convert.parse_resource_name(request.name)

        def read() -> pb.Tagger:
            try:
                info = self._registry.get(tagger)
            except TaggerNotFound:
                raise not_found(request.name, "tagger") from None
            return convert.tagger_message(info, self.preferred_tagger())

        return await asyncio.to_thread(read)

    # ---- tagging ----------------------------------------------------------------------------------------------

    @unary_errors
    async def TagImages(self, request: pb.TagImagesRequest, context: grpc.aio.ServicerContext) -> pb.TagImagesResponse:
        tenant = current_tenant()
        self._check_images(request)
        options = convert.options_from(request.options)
        named = convert.parse_resource_name(request.tagger, "tagger") if request.tagger else None

        def tag() -> pb.TagImagesResponse:
            tagger = named or self.preferred_tagger()
            engine = self.load_engine(tagger)
            sources = [self._source(image) for image in request.images]
            started = time.perf_counter()
            results = engine.tag(sources, options, screen=not request.skip_screening)
            log.info(
                "tagged",
                extra={
                    "fields": {
                        "tenant": tenant,
                        "tagger": tagger,
                        "images": len(results),
                        "failed": sum(not r.ok for r in results),
                        "seconds": round(time.perf_counter() - started, 3),
                    }
                },
            )
            return pb.TagImagesResponse(
                tagger=convert.resource_name(tagger), results=[convert.result_message(r) for r in results]
            )

        # The call's context goes along, so the object-store reads it starts keep its deadline.
        return await asyncio.get_running_loop().run_in_executor(self._tagging_pool, contextvars.copy_context().run,
                                                                tag)

    def _check_images(self, request: pb.TagImagesRequest) -> None:
        limit = self._settings.tagger_max_images
        if not 1 <= len(request.images) <= limit:
            raise invalid_field("images", f"send 1 to {limit} images per call", "IMAGE_COUNT")
        violations = []
        for i, image in enumerate(request.images):
            kind = image.WhichOneof("source")
            if kind is None:
                violations.append(FieldViolation(f"images[{i}]", "set object_key or content", "MISSING_SOURCE"))
            elif kind == "content" and not image.content:
                violations.append(FieldViolation(f"images[{i}].content", "is empty", "EMPTY_IMAGE"))
            elif kind == "object_key":
                problem = self._key_problem(image.object_key)
                if problem:
                    violations.append(FieldViolation(f"images[{i}].object_key", problem, "INVALID_OBJECT_KEY"))
        if violations:
            raise invalid(violations)

    def _key_problem(self, key: str) -> str:
        if self._store is None:
            return "this tagger service has no object store configured; send the image as content"
        if ".." in key.split("/") or key.startswith("/") or "\x00" in key:
            return "must be a plain object key"
        prefixes = self._settings.tagger_object_prefixes
        if not key.startswith(prefixes):
            return f"must start with one of {', '.join(prefixes)}"
        return ""

    def _source(self, image: pb.ImageSource) -> bytes | Callable[[], bytes]:
        if image.WhichOneof("source") == "content":
            return image.content
        store, key = self._store, image.object_key
        assert store is not None  # checked by _check_images

        observer = self._observer

        def fetch() -> bytes:
            # In the pipeline's threads: timed here, as the dataset service's calls are by Dependency.
            started, outcome = time.perf_counter(), "ok"
            try:
                return store.get_bytes(key)
            except ObjectNotFound:
                outcome = "not found"
                raise ImageUnavailable(f"object {key!r} does not exist") from None
            except Exception as exc:
                outcome = "unavailable" if failed_dependency(exc) == OBJECT_STORE else "error"
                raise
            finally:
                if observer is not None:
                    observer.observe(OBJECT_STORE, "get_bytes", time.perf_counter() - started, outcome)

        return fetch
