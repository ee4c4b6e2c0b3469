"""The gRPC proxy's streaming handlers are cancelled wherever the client's cancellation lands."""

import asyncio
import enum
import inspect

import pytest

from services.gateway.grpc_ingress import cancel_streams_on_client_cancel, pumped


class Kind(enum.Enum):  # the names of Ray Serve's gRPCStreamingType
    UNARY_UNARY = 1
    UNARY_STREAM = 2


class Call:
    """A call's context whose client stops reading after the first message: the second write
    waits (as grpc's does when the client's flow-control window is full)."""

    def __init__(self):
        self.written: list = []
        self.writing = asyncio.Event()
        self.open = True

    async def write(self, message):
        assert self.open, "written after the call ended"
        self.written.append(message)
        self.writing.set()
        if len(self.written) > 1:
            await asyncio.sleep(30)


def token_stream(events: list):
    """Like the proxy's handler: waits for each token from the replica and yields it; winds down
    (reading the call's context) when cancelled."""

    async def handler(request, context):
        try:
            n = 0
            while True:
                await asyncio.sleep(0.005)
                n += 1
                yield n
        except asyncio.CancelledError:
            events.append("replica call cancelled")
            raise
        finally:
            await asyncio.sleep(0.01)
            assert context.open, "the handler outlived its call"
            events.append("handler ended")

    return handler


async def grpc_runs(handler, call: Call, cancel_during_write: bool = True) -> None:
    """What grpc.aio does with a streaming handler (a coroutine writes itself; a generator's
    messages are written by grpc), the client cancelling while a write waits."""

    async def serve():
        if inspect.iscoroutinefunction(handler):
            await handler(None, call)
        else:
            async for message in handler(None, call):
                await call.write(message)

    task = asyncio.create_task(serve())
    await call.writing.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    call.open = False
    await asyncio.sleep(0.05)


def test_a_stream_cancelled_during_a_write_cancels_its_replica_call_before_the_call_ends():
    events: list = []
    asyncio.run(grpc_runs(pumped(token_stream(events)), Call()))
    assert events == ["replica call cancelled", "handler ended"]


def test_the_unwrapped_handler_is_left_running_which_is_why_this_exists():
    events: list = []

    async def main():
        await grpc_runs(token_stream(events), Call())
        return events[:]  # before the event loop closes the left-over generator

    assert asyncio.run(main()) == []


def test_messages_errors_and_the_end_pass_through_unchanged():
    async def handler(request, context):
        yield b"a"
        yield b"b"
        if request == "fail":
            raise ValueError("replica failed")

    class Open(Call):
        async def write(self, message):
            self.written.append(message)

    async def run(request):
        call = Open()
        await pumped(handler)(request, call)
        return call.written

    assert asyncio.run(run("ok")) == [b"a", b"b"]
    with pytest.raises(ValueError, match="replica failed"):
        asyncio.run(run("fail"))


def test_only_server_streaming_handlers_are_wrapped_once():
    made = []

    class Server:
        def service_handler_factory(self, service_method, streaming_type):
            made.append((service_method, streaming_type))
            async def handler(request, context):
                return f"{service_method}:{streaming_type.name}"

            return handler

    server = Server()
    cancel_streams_on_client_cancel(None, server)
    wrapped = server.service_handler_factory
    cancel_streams_on_client_cancel(None, server)  # listed twice: still one wrapper
    assert server.service_handler_factory is wrapped
    unary = wrapped("/twin.v1.ChatService/Chat", Kind.UNARY_UNARY)
    assert inspect.iscoroutinefunction(unary)  # grpc.aio awaits only coroutine functions
    assert asyncio.run(unary(None, None)) == "/twin.v1.ChatService/Chat:UNARY_UNARY"
    assert inspect.iscoroutinefunction(wrapped("/twin.v1.ChatService/ChatStream", Kind.UNARY_STREAM))
    assert made == [("/twin.v1.ChatService/Chat", Kind.UNARY_UNARY),
                    ("/twin.v1.ChatService/ChatStream", Kind.UNARY_STREAM)]
    cancel_streams_on_client_cancel(None, object())  # another server: left alone, no error


def test_the_callers_metadata_and_the_proxys_status_follow_the_platforms_policy(monkeypatch):
    """A caller's trace headers are dropped (unless TWIN_TRUST_CLIENT_TRACE); Serve's own INTERNAL
    (the replica it called died) goes out as UNAVAILABLE, the platform's "internal error" as it is."""
    import grpc

    from services.gateway.grpc_ingress import PolicyContext

    class Context:
        code = details = None

        def invocation_metadata(self):
            return (("authorization", "Bearer k"), ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
                    ("tracestate", "x=y"))

        def set_code(self, code):
            self.code = code

        def set_details(self, details):
            self.details = details

    from services.gateway.proxy_guard import trust_client_trace

    monkeypatch.delenv("TWIN_TRUST_CLIENT_TRACE", raising=False)
    trust_client_trace.cache_clear()
    raw = Context()
    context = PolicyContext(raw)
    assert context.invocation_metadata() == (("authorization", "Bearer k"),)
    monkeypatch.setenv("TWIN_TRUST_CLIENT_TRACE", "true")
    trust_client_trace.cache_clear()
    assert len(context.invocation_metadata()) == 3
    trust_client_trace.cache_clear()  # the next test's process state is its own

    context.set_code(grpc.StatusCode.INTERNAL)
    context.set_details("ActorDiedError: The actor died unexpectedly before finishing this task.")
    assert raw.code == grpc.StatusCode.UNAVAILABLE and "retry" in raw.details
    ours = Context()
    PolicyContext(ours).set_code(grpc.StatusCode.INTERNAL)
    PolicyContext(ours).set_details("internal error: KeyError")
    assert ours.code == grpc.StatusCode.INTERNAL and ours.details == "internal error: KeyError"


def test_a_request_that_is_not_its_methods_message_is_invalid_argument_naming_why():
    """grpc reports a deserializer's exception as UNKNOWN ("Unexpected <class DecodeError>"): the
    proxy's deserializers hand an Undecodable on instead, which the handlers refuse."""
    import grpc

    from services.gateway.grpc_ingress import Undecodable, decoding_safely, with_policy
    from twin.v1 import retrieval_pb2

    handler = decoding_safely(grpc.unary_unary_rpc_method_handler(
        lambda r, c: None, request_deserializer=retrieval_pb2.SearchRequest.FromString))
    bad = handler.request_deserializer(b"\x0a\x03\xff\xfe\x80")  # query: three bytes that are not UTF-8
    assert isinstance(bad, Undecodable) and bad.details == \
        "the request is not a valid twin.v1.SearchRequest: String field had bad UTF-8"
    assert handler.request_deserializer(b"\x0a\x02ok").query == "ok"

    class Aborted(Exception):
        pass

    class Context:
        async def abort(self, code, details):
            self.status = (code, details)
            raise Aborted

    async def served(request, context):
        return "served"

    async def streamed(request, context):
        yield "served"

    async def run(streaming: bool):
        context = Context()
        with pytest.raises(Aborted):
            if streaming:
                [m async for m in with_policy(streamed, streaming=True)(bad, context)]
            else:
                await with_policy(served, streaming=False)(bad, context)
        return context.status

    for streaming in (False, True):
        assert asyncio.run(run(streaming)) == (grpc.StatusCode.INVALID_ARGUMENT, bad.details)
