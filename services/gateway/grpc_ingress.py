"""Client cancellation through Ray Serve's gRPC proxy, made reliable for streaming RPCs.

Ray Serve 2.60's gRPC proxy cancels the replica's stream only when the client's cancellation
reaches the proxy while it waits for the next message (ProxyResponseGenerator.__anext__). When it
lands while the proxy is writing a message to the client, the proxy's generator is left
suspended and never closed, so the replica keeps generating to max_tokens for nobody (seen in CI:
a cancelled ChatStream ran its 1000 tokens; the upstream fix, ray-project/ray#42665, was closed
unmerged). The HTTP proxy watches for the disconnect separately and is not affected.

The same wrapper applies the platform's policy on the caller's metadata (`proxy_guard`: a caller's
trace headers are dropped unless trusted) before the proxy reads it.

The servicer function below is listed first in ``grpc_options.grpc_servicer_functions``; the
proxy calls it with its server before registering the twin's services. It wraps the server's
handler factory so that every server-streaming handler is driven from a task of its own that only
ever waits for the next message: the write to the client happens elsewhere, so a cancellation
always reaches the proxy's generator where it cancels the replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from .proxy_guard import client_metadata, proxy_status

logger = logging.getLogger(__name__)
_END = object()


def cancel_streams_on_client_cancel(servicer, server) -> None:
    """A gRPC servicer function (``(servicer, server)``) that registers no service: it makes the
    proxy's streaming handlers cancel their replica call whenever the client cancels, and a request
    that is not a valid message of its method an INVALID_ARGUMENT (:class:`Undecodable`)."""
    factory = getattr(server, "service_handler_factory", None)
    if factory is None:  # not Serve's proxy server (or a Ray that changed it): nothing to wrap
        logger.warning("gRPC server %s has no service_handler_factory; streams rely on Ray's own cancellation",
                       type(server).__name__)
        return
    if getattr(factory, "cancels_streams", False):
        return
    server.service_handler_factory = cancelling_factory(factory)
    override = getattr(server, "_override_method_handler", None)
    if override is not None:
        server._override_method_handler = lambda method, handler: override(method, decoding_safely(handler))


class Undecodable:
    """What a request's bytes decode to when they are not a message of the method's type: grpc
    reports a deserializer's exception as UNKNOWN ("Unexpected <class DecodeError>"); handed on
    as this, the handler answers INVALID_ARGUMENT naming the message type and the parser's reason."""

    def __init__(self, message_type: str, reason: str):
        self.details = f"the request is not a valid {message_type}: {reason}"


def decoding_safely(handler):
    """``handler`` (a grpc.RpcMethodHandler) with a request deserializer that never raises."""
    parse = handler.request_deserializer
    if parse is None:
        return handler

    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or any parser's error
            owner = getattr(parse, "__self__", None)
            name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", None) or "message of this method"
            return Undecodable(name, str(exc).split(": ")[-1] or type(exc).__name__)

    return handler._replace(request_deserializer=deserialize)


class PolicyContext:
    """The call's context with the caller's metadata as the platform's policy has it
    (`proxy_guard.client_metadata`: no trace headers from the caller unless trusted)."""

    def __init__(self, context):
        self._context = context
        self._code = None

    def invocation_metadata(self):
        return tuple(client_metadata(self._context.invocation_metadata()))

    # The proxy sets a code, then its details: an INTERNAL of its own becomes UNAVAILABLE (proxy_status).
    def set_code(self, code):
        self._code = code
        self._context.set_code(proxy_status(code, None)[0] if code != grpc.StatusCode.INTERNAL else code)

    def set_details(self, details):
        code, details = proxy_status(self._code, details)
        if code != self._code:
            self._context.set_code(code)
        self._context.set_details(details)

    def __getattr__(self, name: str):
        return getattr(self._context, name)


def with_policy(handler: Callable, streaming: bool) -> Callable:
    """The handler called with a PolicyContext; grpc.aio awaits a unary handler only when it is a
    coroutine function, so the unary wrapper is one. An :class:`Undecodable` request is refused."""
    if streaming:
        async def refused(request, context):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)
            yield  # pragma: no cover - abort raises

        return lambda request, context: (refused(request, context) if isinstance(request, Undecodable)
                                         else handler(request, PolicyContext(context)))

    async def unary(request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)
        return await handler(request, PolicyContext(context))

    return unary


def cancelling_factory(factory: Callable) -> Callable:
    def make(service_method: str, streaming_type):
        handler = factory(service_method=service_method, streaming_type=streaming_type)
        if getattr(streaming_type, "name", "") == "UNARY_STREAM":
            return pumped(with_policy(handler, streaming=True))
        if getattr(streaming_type, "name", "") == "UNARY_UNARY":
            return with_policy(handler, streaming=False)
        return handler

    make.cancels_streams = True
    return make


def pumped(handler: Callable[..., AsyncIterator]) -> Callable[..., Awaitable[None]]:
    """The streaming handler as a coroutine that writes its messages itself (grpc.aio's
    reader/writer form), the handler's messages pulled by a task of their own into a queue.

    The pulling task awaits nothing but the handler's next message, so cancelling it (done however
    the call ends) always interrupts the handler at that await. A coroutine rather than a generator,
    because grpc leaves a cancelled generator suspended instead of closing it."""

    async def unary_stream(request, context) -> None:
        queue: asyncio.Queue = asyncio.Queue()  # unbounded: the pump must never wait on a put

        async def pump():
            try:
                async for message in handler(request, context):
                    queue.put_nowait((message, None))
                queue.put_nowait((_END, None))
            except asyncio.CancelledError:
                pass  # the caller left; the handler has cancelled its replica call on the way out
            except BaseException as exc:  # noqa: BLE001 - re-raised in the call's task
                queue.put_nowait((_END, exc))

        task = asyncio.get_running_loop().create_task(pump())
        try:
            while True:
                message, error = await queue.get()
                if message is _END:
                    if error is not None:
                        raise error
                    return
                await context.write(message)
        finally:
            task.cancel()  # a no-op when the pump has finished
            # Wait for the handler to wind down while the call is still open: it reads the call's
            # context as it ends, and grpc frees that context once this coroutine returns (reading
            # it afterwards crashed the proxy).
            await asyncio.wait([task])

    return unary_stream
