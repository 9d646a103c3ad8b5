"""Server interceptors that run code around every call's handler.

grpc.aio hands an interceptor the method name only; the call's context and its outcome are
seen by the handler. `AroundCalls` therefore wraps each handler in one that enters an async
context manager with the method and the context, for all four call shapes alike: the
internal-auth check, the metrics and the deadline all use it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc

from services.common import call_context

CallHook = Callable[[str, grpc.aio.ServicerContext], contextlib.AbstractAsyncContextManager[None]]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

# Services every caller may reach without credentials: probes and tooling.
HEALTH_SERVICE = "/grpc.health.v1.Health/"
REFLECTION_SERVICES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
OPEN_PREFIXES = (HEALTH_SERVICE, *REFLECTION_SERVICES)


class AroundCalls(grpc.aio.ServerInterceptor):
    def __init__(self, hook: CallHook, exempt_prefixes: Collection[str] = ()) -> None:
        self._hook = hook
        self._exempt = tuple(exempt_prefixes)

    def applies_to(self, method: str) -> bool:
        return not method.startswith(self._exempt)

    def around(self, method: str, context: grpc.aio.ServicerContext) -> contextlib.AbstractAsyncContextManager[None]:
        return self._hook(method, context)

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not self.applies_to(method):
            return handler
        return wrap_handler(handler, lambda context: self._hook(method, context))


def chained(*parts: AroundCalls) -> AroundCalls:
    """One interceptor that enters each part's hook in order, the first outermost. Each interceptor
    wraps the handler once more, and every message of a stream passes through every wrapper: one
    wrapper for all of them keeps a relayed stream's cost per message down."""
    @contextlib.asynccontextmanager
    async def around_each(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for part in parts:
                if part.applies_to(method):
                    await stack.enter_async_context(part.around(method, context))
            yield

    return AroundCalls(around_each)


def wrap_handler(handler: grpc.RpcMethodHandler,
                 around: Callable[[grpc.aio.ServicerContext], contextlib.AbstractAsyncContextManager[None]]
                 ) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        inner_uu: Any = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with around(context):
                return await inner_uu(request, context)

        return handler._replace(unary_unary=unary_unary)  # type: ignore[attr-defined]
    if handler.stream_unary is not None:
        inner_su: Any = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async with around(context):
                return await inner_su(requests, context)

        return handler._replace(stream_unary=stream_unary)  # type: ignore[attr-defined]
    if handler.unary_stream is not None:
        inner_us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with around(context):
                result = inner_us(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:
                    await result

        return handler._replace(unary_stream=unary_stream)  # type: ignore[attr-defined]
    inner_ss: Any = handler.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with around(context):
            async for item in _responses(inner_ss(requests, context)):
                yield item

    return handler._replace(stream_stream=stream_stream)  # type: ignore[attr-defined]


async def _responses(result: Any) -> AsyncIterator[Any]:
    """A streaming handler is an async generator, or a coroutine that writes through its context."""
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    else:
        await result


@contextlib.asynccontextmanager
async def _with_deadline(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    with call_context.deadline_in(context.time_remaining()):
        yield


def deadline_interceptor() -> AroundCalls:
    """Makes the caller's deadline the limit of every dependency call the handler makes."""
    return AroundCalls(_with_deadline)
