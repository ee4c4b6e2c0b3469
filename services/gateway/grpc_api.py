"""The gRPC transport (twin.v1 and grpc.health.v1) over the data plane.

Ray Serve's gRPC proxy routes each RPC to the ingress method of the same name; the Gateway
deployment inherits these methods. Errors become status codes in one place (:func:`abort`).
A streaming method reports its status by setting it and raising (Serve's contract); a unary one
sets it and returns an empty message.
"""

from __future__ import annotations

from contextlib import aclosing

import grpc
from grpc_health.v1 import health_pb2

from twin.v1 import chat_pb2, common_pb2, crawler_pb2, embedding_pb2, generation_pb2, retrieval_pb2

from .dataplane import SERVICES, DataPlane
from .status import status_for


def abort(exc: BaseException, grpc_context) -> None:
    mapped = status_for(exc)
    code, message = (mapped[0], mapped[2]) if mapped else (grpc.StatusCode.INTERNAL,
                                                           f"internal error: {type(exc).__name__}")
    grpc_context.set_code(code)
    grpc_context.set_details(message)


def source_proto(r) -> common_pb2.Source:
    return common_pb2.Source(document_id=r.doc_id, chunk_id=r.chunk_id, title=r.title, link=r.link, author=r.author,
                             category=r.category, text=r.text, score=r.score, similarity=r.similarity)


def _messages(items) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in items]


def _usage(d) -> common_pb2.Usage | None:
    return common_pb2.Usage(prompt_tokens=d.prompt_tokens, completion_tokens=d.completion_tokens) \
        if d.finish_reason else None


class GrpcApi:
    """twin.v1 servicer methods; ``self.plane`` is the data plane."""

    plane: DataPlane

    def _allow(self, grpc_context, operation: str) -> None:
        """The caller's key (metadata `authorization: Bearer KEY`) must cover ``operation``."""
        metadata = {k.lower(): v for k, v in (grpc_context.invocation_metadata() or ())}
        self.plane.authorize(metadata.get("authorization"), grpc_context.peer(), operation)

    def _sampling(self, s: generation_pb2.SamplingParams):
        # proto3 zero values mean "not set": the server defaults apply.
        return self.plane.sampling(s.max_tokens or None, s.temperature, s.top_p or None, s.seed or None,
                                   s.repetition_penalty or None, top_k=s.top_k, presence_penalty=s.presence_penalty,
                                   frequency_penalty=s.frequency_penalty, stop=list(s.stop) or None)

    async def Crawl(self, request: crawler_pb2.CrawlRequest, grpc_context) -> crawler_pb2.CrawlResponse:
        try:
            self._allow(grpc_context, "crawl")
            r = await self.plane.crawl(request.twin, list(request.targets), request.source_type, request.index)
        except Exception as exc:
            abort(exc, grpc_context)
            return crawler_pb2.CrawlResponse()
        return crawler_pb2.CrawlResponse(
            stored=r["stored"], updated=r["updated"], unchanged=r["unchanged"], failed=r["failed"],
            chunks_indexed=r["chunks_indexed"],
            outcomes=[crawler_pb2.CrawlOutcome(target=o["target"], status=o["status"], detail=o["detail"],
                                               document_id=o["doc_id"] or "") for o in r["outcomes"]])

    async def Embed(self, request: embedding_pb2.EmbedRequest, grpc_context) -> embedding_pb2.EmbedResponse:
        try:
            self._allow(grpc_context, "embed")
            r = await self.plane.embed(list(request.texts))
        except Exception as exc:
            abort(exc, grpc_context)
            return embedding_pb2.EmbedResponse()
        return embedding_pb2.EmbedResponse(
            model=r["model"], dimension=r["dimension"], prompt_tokens=r["prompt_tokens"],
            embeddings=[embedding_pb2.Embedding(values=v.tolist()) for v in r["vectors"]])

    async def Search(self, request: retrieval_pb2.SearchRequest, grpc_context) -> retrieval_pb2.SearchResponse:
        try:
            self._allow(grpc_context, "search")
            results = await self.plane.search(request.query, request.twin, request.category, request.top_k,
                                              request.strategy)
        except Exception as exc:
            abort(exc, grpc_context)
            return retrieval_pb2.SearchResponse()
        return retrieval_pb2.SearchResponse(sources=[source_proto(r) for r in results])

    async def ListTwins(self, request: retrieval_pb2.ListTwinsRequest, grpc_context) -> retrieval_pb2.ListTwinsResponse:
        try:
            self._allow(grpc_context, "models")
            twins = await self.plane.twins()
        except Exception as exc:
            abort(exc, grpc_context)
            return retrieval_pb2.ListTwinsResponse()
        return retrieval_pb2.ListTwinsResponse(twins=[
            retrieval_pb2.Twin(id=slug, name=t["name"], documents=t["documents"], chunks=t["chunks"])
            for slug, t in twins.items()])

    async def Generate(self, request: generation_pb2.GenerateRequest, grpc_context) -> generation_pb2.GenerateResponse:
        try:
            self._allow(grpc_context, "generate")
            r = await self.plane.generate(_messages(request.messages), self._sampling(request.sampling), "grpc")
        except Exception as exc:
            abort(exc, grpc_context)
            return generation_pb2.GenerateResponse()
        return generation_pb2.GenerateResponse(text=r["text"], finish_reason=r["finish_reason"], model=r["model"],
                                               usage=common_pb2.Usage(prompt_tokens=r["prompt_tokens"],
                                                                      completion_tokens=r["completion_tokens"]))

    async def GenerateStream(self, request: generation_pb2.GenerateRequest, grpc_context):
        try:
            self._allow(grpc_context, "generate")
            deltas = await self.plane.generate_stream(_messages(request.messages), self._sampling(request.sampling),
                                                      "grpc")
            async with aclosing(deltas):
                async for d in deltas:
                    yield generation_pb2.GenerateChunk(delta=d.text, finish_reason=d.finish_reason or "",
                                                       usage=_usage(d))
        except Exception as exc:
            abort(exc, grpc_context)
            raise

    async def Chat(self, request: chat_pb2.ChatRequest, grpc_context) -> chat_pb2.ChatResponse:
        try:
            self._allow(grpc_context, "chat")
            a = await self.plane.chat(request.twin, _messages(request.messages), self._sampling(request.sampling),
                                      request.top_k or None, "grpc")
        except Exception as exc:
            abort(exc, grpc_context)
            return chat_pb2.ChatResponse()
        return chat_pb2.ChatResponse(answer=a.text, sources=[source_proto(s) for s in a.sources],
                                     finish_reason=a.finish_reason, model=a.model, id=a.id,
                                     usage=common_pb2.Usage(prompt_tokens=a.prompt_tokens,
                                                            completion_tokens=a.completion_tokens))

    async def ChatStream(self, request: chat_pb2.ChatRequest, grpc_context):
        try:
            self._allow(grpc_context, "chat")
            started = await self.plane.start_chat(request.twin, _messages(request.messages),
                                                  self._sampling(request.sampling), request.top_k or None, "grpc")
            # Closed however the call ends: a cancelled call may leave this generator suspended at a
            # yield, and only closing it (not garbage collection, whenever that runs) cancels the
            # generation downstream.
            async with aclosing(started.deltas):
                yield chat_pb2.ChatChunk(sources=[source_proto(s) for s in started.sources], id=started.id)
                async for d in started.deltas:
                    yield chat_pb2.ChatChunk(delta=d.text, finish_reason=d.finish_reason or "", usage=_usage(d))
        except Exception as exc:
            abort(exc, grpc_context)
            raise

    async def Feedback(self, request: chat_pb2.FeedbackRequest, grpc_context) -> chat_pb2.FeedbackResponse:
        try:
            self._allow(grpc_context, "chat")
            rid = await self.plane.feedback(request.response_id, request.score, request.comment)
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
