"""The platform's Serve application: one ingress for HTTP (JSON + OpenAI API) and gRPC (twin.v1).

One application with five deployments (Gateway -> Crawler, Retrieval, Embedding, Generation),
built by :func:`build_app` (`services.gateway.server:build_app`, the import path a RayService
names). Deployments call each other through handles; the gateway converts protos and JSON at the
edge and maps domain errors to status codes through `status.py`.
"""


from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from grpc_health.v1 import health_pb2
from opentelemetry.trace import SpanKind
from ray import serve

from llm_twin.config import Settings
from llm_twin.telemetry import span
from services.chat.core import Chat, Sources
from services.crawler.server import CrawlerDeployment
from services.embedding.server import EmbeddingDeployment
from services.generation.backend import Delta, SamplingParams
from services.generation.core import sampling_params
from services.generation.server import GenerationDeployment
from services.retrieval.server import RetrievalDeployment
from twin.v1 import (
    chat_pb2,
    common_pb2,
    crawler_pb2,
    embedding_pb2,
    generation_pb2,
    retrieval_pb2,
)

from . import openai_format as oa
from .status import InvalidRequest, status_for

from .entrypoints import APP_NAME, GRPC_SERVICER_FUNCTIONS  # noqa: F401,E402  (re-exported for callers)

SERVICES = {"twin.v1.CrawlerService", "twin.v1.EmbeddingService", "twin.v1.RetrievalService",
            "twin.v1.GenerationService", "twin.v1.ChatService"}

http = FastAPI(title="LLM Twin", version="0.1.0",
               description="JSON mirror of the twin.v1 gRPC API plus an OpenAI-compatible API.")


def _error_response(exc: BaseException) -> JSONResponse:
    mapped = status_for(exc)
    if mapped is None:
        return JSONResponse(oa.error_body(f"internal error: {type(exc).__name__}", 500), status_code=500)
    _, status, message = mapped
    return JSONResponse(oa.error_body(message, status), status_code=status)


@http.exception_handler(RequestValidationError)
async def _invalid_json(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid" or (
            first.get("type") in ("model_attributes_type", "dict_type") and tuple(first.get("loc", ())) == ("body",)):
        return JSONResponse(oa.error_body("the body is not a valid JSON object", 400), status_code=400)
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
    return JSONResponse(oa.error_body(message, 400, where or None), status_code=400)


@http.exception_handler(Exception)
async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    return _error_response(exc)


class _RetrievalClient:
    """Chat core's SourceSearch over the retrieval deployment."""

    def __init__(self, handle):
        self.handle = handle

    async def search(self, query: str, twin: str, top_k: int) -> list:
        return await self.handle.search.remote(query, twin=twin, top_k=top_k)


class _GenerationClient:
    """Chat core's TextStream over the generation deployment; leaving early cancels downstream."""

    def __init__(self, handle):
        self.handle = handle

    async def stream(self, messages: list[dict], params: SamplingParams, twin: str | None = None) -> AsyncIterator[Delta]:
        # The twin rides as Serve's multiplexed model id: its requests go to a replica holding its adapter.
        options = {"stream": True, **({"multiplexed_model_id": twin} if twin else {})}
        response = self.handle.options(**options).stream.remote(messages, params)
        finished = False
        try:
            async for delta in response:
                yield delta
            finished = True
        finally:
            if not finished:
                response.cancel()


def _source_proto(r) -> common_pb2.Source:
    return common_pb2.Source(document_id=r.doc_id, chunk_id=r.chunk_id, title=r.title, link=r.link, author=r.author,
                             category=r.category, text=r.text, score=r.score, similarity=r.similarity)


def _messages(items) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in items]


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(http)
class Gateway:
    def __init__(self, settings: dict, crawler, retrieval, embedding, generation):
        self.settings = Settings(**settings)
        self.crawler, self.retrieval, self.embedding, self.generation = crawler, retrieval, embedding, generation
        self.chat = Chat(_RetrievalClient(retrieval), _GenerationClient(generation), top_k=self.settings.chat_top_k,
                         min_similarity=self.settings.min_source_similarity)

    # -- shared by both transports ---------------------------------------------------------------
    def _sampling(self, max_tokens, temperature, top_p, seed, repetition_penalty=None) -> SamplingParams:
        return sampling_params(max_tokens, temperature, top_p, seed, repetition_penalty,
                               default_max_tokens=self.settings.default_max_tokens,
                               max_new_tokens=self.settings.max_new_tokens,
                               default_repetition_penalty=self.settings.repetition_penalty)

    async def _chat(self, twin: str, messages: list[dict], params: SamplingParams, top_k: int | None,
                    transport: str) -> tuple[list, AsyncIterator[Delta], Delta | None]:
        """Starts a chat and runs it up to its first token, so that every error a request can cause
        (bad input, unknown twin, prompt too long) surfaces before a response has begun."""
        with span("twin.chat", SpanKind.SERVER, **{"twin.id": twin, "rpc.system": transport,
                                                   "gen_ai.operation.name": "chat"}):
            events = self.chat.stream(twin, messages, params, top_k)
            first = await anext(events)
            assert isinstance(first, Sources)
            head = await anext(events, None)
        return first.items, events, head

    @staticmethod
    async def _deltas(events: AsyncIterator[Delta], head: Delta | None) -> AsyncIterator[Delta]:
        try:
            if head is not None:
                yield head
            async for delta in events:
                yield delta
        finally:
            await events.aclose()

    async def _twin_id(self, twin: str) -> str:
        from llm_twin.documents import author_slug

        try:
            return author_slug(twin)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    # -- HTTP: OpenAI-compatible -----------------------------------------------------------------
    @http.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @http.get("/v1/models")
    async def models(self) -> dict:
        return oa.model_list(await self.retrieval.twins.remote())

    @http.get("/v1/models/{model_id}")
    async def model(self, model_id: str):
        twins = await self.retrieval.twins.remote()
        if model_id not in twins:
            return JSONResponse(oa.error_body(f"no twin {model_id!r}; see /v1/models", 404), status_code=404)
        return oa.model_list({model_id: twins[model_id]})["data"][0]

    @http.post("/v1/chat/completions")
    async def chat_completions(self, body: oa.ChatCompletionRequest):
        if body.n != 1:
            raise InvalidRequest("n must be 1")
        params = self._sampling(body.max_completion_tokens or body.max_tokens, body.temperature, body.top_p, body.seed,
                                body.repetition_penalty)
        messages = [m.text() for m in body.messages]
        model = await self._twin_id(body.model)
        sources, events, head = await self._chat(body.model, messages, params, body.top_k, "http")
        cid = oa.completion_id()
        if not body.stream:
            parts, last = [], head
            async for delta in self._deltas(events, head):
                parts.append(delta.text)
                last = delta
            return oa.chat_completion(cid, model, "".join(parts), last.finish_reason, last.prompt_tokens,
                                      last.completion_tokens, sources)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(self._sse(cid, model, sources, self._deltas(events, head), include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _sse(self, cid: str, model: str, sources: list, deltas: AsyncIterator[Delta],
                   include_usage: bool) -> AsyncIterator[str]:
        yield oa.chunk_event(cid, model, {"role": "assistant", "content": ""},
                             sources=[oa.source_json(s) for s in sources])
        last = None
        try:
            async for delta in deltas:
                last = delta
                if delta.text:
                    yield oa.chunk_event(cid, model, {"content": delta.text})
            yield oa.chunk_event(cid, model, {}, last.finish_reason if last else "stop")
            if include_usage and last:
                yield oa.usage_event(cid, model, last.prompt_tokens, last.completion_tokens)
        except Exception as exc:  # the response has started: the error travels as an event
            mapped = status_for(exc)
            message = mapped[2] if mapped else f"internal error: {type(exc).__name__}"
            yield oa.sse(oa.error_body(message, mapped[1] if mapped else 500))
        finally:
            await deltas.aclose()
        yield oa.sse("[DONE]")

    @http.post("/v1/embeddings")
    async def embeddings(self, body: oa.EmbeddingRequest) -> dict:
        texts = [body.input] if isinstance(body.input, str) else body.input
        result = await self.embedding.embed.remote(texts)
        info = await self.embedding.info.remote()
        return oa.embeddings(result["vectors"], info["model"], result["prompt_tokens"], body.encoding_format)

    # -- HTTP: JSON mirror of the gRPC API -------------------------------------------------------
    @http.post("/v1/search")
    async def search_json(self, request: Request) -> dict:
        body = await self._json(request)
        results = await self.retrieval.search.remote(str(body.get("query", "")), twin=body.get("twin") or None,
                                                     category=body.get("category") or None,
                                                     top_k=int(body.get("top_k") or 5),
                                                     strategy=body.get("strategy") or "hybrid")
        return {"sources": [oa.source_json(r) for r in results]}

    @http.post("/v1/crawl")
    async def crawl_json(self, request: Request) -> dict:
        body = await self._json(request)
        targets = body.get("targets") or []
        if not isinstance(targets, list):
            raise InvalidRequest("targets must be a list of URLs or paths")
        return await self.crawler.crawl.remote(str(body.get("twin", "")), [str(t) for t in targets],
                                               body.get("source_type") or "auto", bool(body.get("index", False)))

    @http.post("/v1/generate")
    async def generate_json(self, request: Request):
        """GenerationService as JSON: {"messages": [...], "max_tokens", "temperature", "top_p", "seed",
        "stream"}; streamed as SSE events {"delta"}, the last one with "finish_reason" and "usage"."""
        body = await self._json(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise InvalidRequest("messages must be a list of {\"role\": ..., \"content\": ...} objects")
        params = self._sampling(body.get("max_tokens"), body.get("temperature"), body.get("top_p"), body.get("seed"),
                                body.get("repetition_penalty"))
        await self.generation.validate.remote(messages)
        if not body.get("stream"):
            r = await self.generation.generate.remote(messages, params)
            return {"text": r["text"], "finish_reason": r["finish_reason"], "model": r["model"],
                    "usage": oa.usage_json(r["prompt_tokens"], r["completion_tokens"])}

        async def events():
            deltas = _GenerationClient(self.generation).stream(messages, params)
            try:
                async for d in deltas:
                    event = {"delta": d.text}
                    if d.finish_reason:
                        event.update(finish_reason=d.finish_reason,
                                     usage=oa.usage_json(d.prompt_tokens, d.completion_tokens))
                    yield oa.sse(event)
            except Exception as exc:  # noqa: BLE001 - the response has started: the error is an event
                mapped = status_for(exc)
                yield oa.sse(oa.error_body(mapped[2] if mapped else f"internal error: {type(exc).__name__}",
                                           mapped[1] if mapped else 500))
            finally:
                await deltas.aclose()
            yield oa.sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @http.get("/v1/stats")
    async def stats(self) -> dict:
        """Generation engine counters (queued, active, batches, cancelled): what operators watch."""
        return {"generation": await self.generation.stats.remote()}

    @staticmethod
    async def _json(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise InvalidRequest("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        return body

    # -- gRPC: twin.v1 (Ray Serve's proxy routes each RPC to the method of the same name) --------
    @staticmethod
    def _grpc_error(exc: BaseException, grpc_context) -> None:
        mapped = status_for(exc)
        code, message = (mapped[0], mapped[2]) if mapped else (grpc.StatusCode.INTERNAL,
                                                               f"internal error: {type(exc).__name__}")
        grpc_context.set_code(code)
        grpc_context.set_details(message)

    async def Crawl(self, request: crawler_pb2.CrawlRequest, grpc_context) -> crawler_pb2.CrawlResponse:
        try:
            r = await self.crawler.crawl.remote(request.twin, list(request.targets), request.source_type or "auto",
                                                request.index)
        except Exception as exc:
            self._grpc_error(exc, grpc_context)
            return crawler_pb2.CrawlResponse()
        return crawler_pb2.CrawlResponse(
            stored=r["stored"], updated=r["updated"], unchanged=r["unchanged"], failed=r["failed"],
            chunks_indexed=r["chunks_indexed"],
            outcomes=[crawler_pb2.CrawlOutcome(target=o["target"], status=o["status"], detail=o["detail"],
                                               document_id=o["doc_id"] or "") for o in r["outcomes"]])

    async def Embed(self, request: embedding_pb2.EmbedRequest, grpc_context) -> embedding_pb2.EmbedResponse:
        try:
            result = await self.embedding.embed.remote(list(request.texts))
            info = await self.embedding.info.remote()
        except Exception as exc:
            self._grpc_error(exc, grpc_context)
            return embedding_pb2.EmbedResponse()
        return embedding_pb2.EmbedResponse(
            model=info["model"], dimension=info["dimension"], prompt_tokens=result["prompt_tokens"],
            embeddings=[embedding_pb2.Embedding(values=v.tolist()) for v in result["vectors"]])

    async def Search(self, request: retrieval_pb2.SearchRequest, grpc_context) -> retrieval_pb2.SearchResponse:
        try:
            results = await self.retrieval.search.remote(request.query, twin=request.twin or None,
                                                         category=request.category or None, top_k=request.top_k or 5,
                                                         strategy=request.strategy or "hybrid")
        except Exception as exc:
            self._grpc_error(exc, grpc_context)
            return retrieval_pb2.SearchResponse()
        return retrieval_pb2.SearchResponse(sources=[_source_proto(r) for r in results])

    async def ListTwins(self, request: retrieval_pb2.ListTwinsRequest, grpc_context) -> retrieval_pb2.ListTwinsResponse:
        twins = await self.retrieval.twins.remote()
        return retrieval_pb2.ListTwinsResponse(twins=[
            retrieval_pb2.Twin(id=slug, name=t["name"], documents=t["documents"], chunks=t["chunks"])
            for slug, t in twins.items()])

    def _grpc_sampling(self, s: generation_pb2.SamplingParams) -> SamplingParams:
        # proto3 zero values mean "not set": the server defaults apply.
        return self._sampling(s.max_tokens or None, s.temperature, s.top_p or None, s.seed or None,
                              s.repetition_penalty or None)

    async def Generate(self, request: generation_pb2.GenerateRequest, grpc_context) -> generation_pb2.GenerateResponse:
        try:
            params = self._grpc_sampling(request.sampling)
            with span("twin.generate", SpanKind.SERVER, **{"rpc.system": "grpc"}):
                r = await self.generation.generate.remote(_messages(request.messages), params)
        except Exception as exc:
            self._grpc_error(exc, grpc_context)
            return generation_pb2.GenerateResponse()
        return generation_pb2.GenerateResponse(text=r["text"], finish_reason=r["finish_reason"], model=r["model"],
                                               usage=common_pb2.Usage(prompt_tokens=r["prompt_tokens"],
                                                                      completion_tokens=r["completion_tokens"]))

    async def GenerateStream(self, request: generation_pb2.GenerateRequest, grpc_context):
        try:
            params = self._grpc_sampling(request.sampling)
            messages = _messages(request.messages)
            await self.generation.validate.remote(messages)
            async for d in _GenerationClient(self.generation).stream(messages, params):
                yield generation_pb2.GenerateChunk(
                    delta=d.text, finish_reason=d.finish_reason or "",
                    usage=common_pb2.Usage(prompt_tokens=d.prompt_tokens, completion_tokens=d.completion_tokens)
                    if d.finish_reason else None)
        except Exception as exc:
            # A streaming method reports its status by raising after setting it (Serve's contract).
            self._grpc_error(exc, grpc_context)
            raise

    async def Chat(self, request: chat_pb2.ChatRequest, grpc_context) -> chat_pb2.ChatResponse:
        try:
            params = self._grpc_sampling(request.sampling)
            sources, events, head = await self._chat(request.twin, _messages(request.messages), params,
                                                     request.top_k or None, "grpc")
            parts, last = [], head
            async for delta in self._deltas(events, head):
                parts.append(delta.text)
                last = delta
            model = await self._twin_id(request.twin)
        except Exception as exc:
            self._grpc_error(exc, grpc_context)
            return chat_pb2.ChatResponse()
        return chat_pb2.ChatResponse(answer="".join(parts), sources=[_source_proto(s) for s in sources],
                                     finish_reason=last.finish_reason or "stop", model=model,
                                     usage=common_pb2.Usage(prompt_tokens=last.prompt_tokens,
                                                            completion_tokens=last.completion_tokens))

    async def ChatStream(self, request: chat_pb2.ChatRequest, grpc_context):
        try:
            params = self._grpc_sampling(request.sampling)
            sources, events, head = await self._chat(request.twin, _messages(request.messages), params,
                                                     request.top_k or None, "grpc")
            yield chat_pb2.ChatChunk(sources=[_source_proto(s) for s in sources])
            async for d in self._deltas(events, head):
                yield chat_pb2.ChatChunk(
                    delta=d.text, finish_reason=d.finish_reason or "",
                    usage=common_pb2.Usage(prompt_tokens=d.prompt_tokens, completion_tokens=d.completion_tokens)
                    if d.finish_reason else None)
        except Exception as exc:
            # A streaming method reports its status by raising after setting it (Serve's contract).
            self._grpc_error(exc, grpc_context)
            raise

    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1: SERVING once the whole application answers (Serve only routes here when
        the app is deployed); unknown service names get NOT_FOUND, as the protocol says."""
        if request.service and request.service not in SERVICES:
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service {request.service!r}")
            return health_pb2.HealthCheckResponse()
        try:
            await self.generation.model_id.remote()
            await self.retrieval.has_twin.remote("health")
        except Exception:
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def build_app(args: dict | None = None):
    """The platform application. ``args`` are Settings fields (the RayService's ``args``);
    anything not given comes from TWIN_* environment variables, then the defaults."""
    settings = Settings(**(args or {}))
    settings = settings.model_copy(update={"data_dir": Path(settings.data_dir).resolve()})
    config = settings.model_dump(mode="json")
    embedding = EmbeddingDeployment.bind(config)
    retrieval = RetrievalDeployment.bind(config, embedding)
    generation = GenerationDeployment.bind(config)
    crawler = CrawlerDeployment.bind(config, retrieval)
    return Gateway.bind(config, crawler, retrieval, embedding, generation)

