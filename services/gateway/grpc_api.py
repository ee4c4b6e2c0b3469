"""The gRPC transport (twin.v1 and grpc.health.v1) over the data plane.

Ray Serve's gRPC proxy routes each RPC to the ingress method of the same name; the Gateway
deployment inherits these methods. Messages are read and built in proto_codec.py only. Errors become
status codes in one place (:func:`abort`).
A streaming method reports its status by setting it and raising (Serve's contract); a unary one
sets it and returns an empty message.
"""

from __future__ import annotations

from contextlib import aclosing

import grpc
from grpc_health.v1 import health_pb2

from twin.v1 import chat_pb2, crawler_pb2, embedding_pb2, generation_pb2, retrieval_pb2

from . import proto_codec as codec
from .dataplane import SERVICES, DataPlane
from .status import status_for


def abort(exc: BaseException, grpc_context) -> None:
    mapped = status_for(exc)
    code, message = (mapped[0], mapped[2]) if mapped else (grpc.StatusCode.INTERNAL,
                                                           f"internal error: {type(exc).__name__}")
    grpc_context.set_code(code)
    grpc_context.set_details(message)


class GrpcApi:
    """twin.v1 servicer methods; ``self.plane`` is the data plane."""

    plane: DataPlane

    def _allow(self, grpc_context, operation: str) -> None:
        """The caller's key (metadata `authorization: Bearer KEY`) must cover ``operation``."""
        metadata = {k.lower(): v for k, v in (grpc_context.invocation_metadata() or ())}
        self.plane.authorize(metadata.get("authorization"), grpc_context.peer(), operation)

    async def Crawl(self, request: crawler_pb2.CrawlRequest, grpc_context) -> crawler_pb2.CrawlResponse:
        try:
            self._allow(grpc_context, "crawl")
            r = await self.plane.crawl(**codec.crawl_request(request))
        except Exception as exc:
            abort(exc, grpc_context)
            return crawler_pb2.CrawlResponse()
        return codec.crawl_response(r)

    async def Embed(self, request: embedding_pb2.EmbedRequest, grpc_context) -> embedding_pb2.EmbedResponse:
        try:
            self._allow(grpc_context, "embed")
            r = await self.plane.embed(codec.embed_request(request))
        except Exception as exc:
            abort(exc, grpc_context)
            return embedding_pb2.EmbedResponse()
        return codec.embed_response(r)

    async def Search(self, request: retrieval_pb2.SearchRequest, grpc_context) -> retrieval_pb2.SearchResponse:
        try:
            self._allow(grpc_context, "search")
            results = await self.plane.search(**codec.search_request(request))
        except Exception as exc:
            abort(exc, grpc_context)
            return retrieval_pb2.SearchResponse()
        return retrieval_pb2.SearchResponse(sources=[codec.source(r) for r in results])

    async def ListTwins(self, request: retrieval_pb2.ListTwinsRequest, grpc_context) -> retrieval_pb2.ListTwinsResponse:
        try:
            self._allow(grpc_context, "models")
            codec.list_twins_request(request)
            twins = await self.plane.twins()
        except Exception as exc:
            abort(exc, grpc_context)
            return retrieval_pb2.ListTwinsResponse()
        return codec.twins_response(twins)

    async def Generate(self, request: generation_pb2.GenerateRequest, grpc_context) -> generation_pb2.GenerateResponse:
        try:
            self._allow(grpc_context, "generate")
            g = codec.generate_request(request, self.plane.limits)
            r = await self.plane.generate(g.messages, g.params, "grpc", twin=g.twin)
        except Exception as exc:
            abort(exc, grpc_context)
            return generation_pb2.GenerateResponse()
        return codec.generate_response(r)

    async def GenerateStream(self, request: generation_pb2.GenerateRequest, grpc_context):
        try:
            self._allow(grpc_context, "generate")
            g = codec.generate_request(request, self.plane.limits)
            deltas = await self.plane.generate_stream(g.messages, g.params, "grpc", twin=g.twin)
            async with aclosing(deltas):
                async for d in deltas:
                    yield codec.generate_chunk(d)
        except Exception as exc:
            abort(exc, grpc_context)
            raise

    async def Chat(self, request: chat_pb2.ChatRequest, grpc_context) -> chat_pb2.ChatResponse:
        try:
            self._allow(grpc_context, "chat")
            c = codec.chat_request(request, self.plane.limits)
            a = await self.plane.chat(c.twin, c.messages, c.params, c.top_k, "grpc")
        except Exception as exc:
            abort(exc, grpc_context)
            return chat_pb2.ChatResponse()
        return codec.chat_response(a)

    async def ChatStream(self, request: chat_pb2.ChatRequest, grpc_context):
        try:
            self._allow(grpc_context, "chat")
            c = codec.chat_request(request, self.plane.limits)
            started = await self.plane.start_chat(c.twin, c.messages, c.params, c.top_k, "grpc")
            # Closed however the call ends: a cancelled call may leave this generator suspended at a
            # yield, and only closing it (not garbage collection, whenever that runs) cancels the
            # generation downstream.
            async with aclosing(started.deltas):
                yield codec.chat_head(started.sources, started.id)
                async for d in started.deltas:
                    yield codec.chat_chunk(d)
        except Exception as exc:
            abort(exc, grpc_context)
            raise

    async def Feedback(self, request: chat_pb2.FeedbackRequest, grpc_context) -> chat_pb2.FeedbackResponse:
        try:
            self._allow(grpc_context, "chat")
            rid = await self.plane.feedback(**codec.feedback_request(request))
        except Exception as exc:
            abort(exc, grpc_context)
            return chat_pb2.FeedbackResponse()
        return chat_pb2.FeedbackResponse(response_id=rid)

    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1: SERVING once the whole application answers (Serve only routes here when
        the app is deployed); unknown service names get NOT_FOUND, as the protocol says."""
        if request.service and request.service not in SERVICES:
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service {request.service!r}")
            return health_pb2.HealthCheckResponse()
        serving = await self.plane.healthy()
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING if serving
                                              else health_pb2.HealthCheckResponse.NOT_SERVING)
