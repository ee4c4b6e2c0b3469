"""The HTTP transport: the OpenAI-compatible API and a JSON mirror of twin.v1, over the data plane.

Routes are plain functions (Ray Serve's ingress keeps them as they are); each finds the replica's
data plane through :func:`plane`. Errors become responses in one place (:func:`error_response`),
and in one place once a stream has started (:func:`error_event`).
"""

from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from . import openai_format as oa
from . import page, tool_calls
from .dataplane import DataPlane
from .http_guards import BodyLimit, Origin, UnicodeJSONRoute, allowed
from .json_mirror import CrawlBody, GenerateBody, SearchBody
from .status import STATUS, InvalidRequest, retry_after, status_for

# No `from __future__ import annotations` here: FastAPI reads the annotations at runtime.

# No /docs, /redoc or /openapi.json: they would answer without a key, and /docs loads scripts from a
# CDN into the chat page's origin. The API is documented in docs/serving.md and by twin.v1's protos.
http = FastAPI(title="LLM Twin", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None,
               description="JSON mirror of the twin.v1 gRPC API plus an OpenAI-compatible API.")
http.router.route_class = UnicodeJSONRoute  # before any route is declared
SSE_HEADERS = {"Cache-Control": "no-cache"}
http.add_middleware(BodyLimit)
http.add_middleware(Origin)  # outermost: BodyLimit's own 413 is marked too
http.include_router(page.router)


def _mapped(exc: BaseException) -> tuple[int, str]:
    mapped = status_for(exc)
    return (mapped[1], mapped[2]) if mapped else (500, f"internal error: {type(exc).__name__}")


def error_response(exc: BaseException) -> JSONResponse:
    status, message = _mapped(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    wait = retry_after(exc)
    if wait is not None:
        headers["Retry-After"] = str(wait)
    return JSONResponse(oa.error_body(message, status), status_code=status, headers=headers or None)


def error_event(exc: BaseException) -> str:
    """An error after the response has started travels as an SSE event."""
    status, message = _mapped(exc)
    return oa.sse(oa.error_body(message, status))


@http.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        why = (first.get("ctx") or {}).get("error")
        where = first.get("loc", ("body", None))[-1]
        return JSONResponse(oa.error_body(f"the body is not a valid JSON object: {why} at character {where}" if why else
                                          "the body is not a valid JSON object", 400), status_code=400)
    if first.get("type") in ("model_attributes_type", "dict_type") and tuple(first.get("loc", ())) == ("body",):
        return JSONResponse(oa.error_body("the body is not a valid JSON object", 400), status_code=400)
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
    return JSONResponse(oa.error_body(message, 400, where or None), status_code=400)


@http.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, wrong method, a body too deeply nested to parse) in
    the API's error shape, not {"detail": ...}."""
    return JSONResponse(oa.error_body(str(exc.detail), exc.status_code), status_code=exc.status_code,
                        headers=exc.headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


# Domain errors are answered where they are raised (no traceback logged); anything else is a bug: 500.
for _error in (*STATUS, Exception):
    http.add_exception_handler(_error, _domain_error)


# -- OpenAI-compatible -------------------------------------------------------------------------------
@http.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@http.get("/v1/models")
async def models(dp: DataPlane = allowed("models")) -> dict:
    return oa.model_list(await dp.twins())


@http.get("/v1/models/{model_id}")
async def model(model_id: str, dp: DataPlane = allowed("models")):
    twins = await dp.twins()
    if model_id not in twins:
        return JSONResponse(oa.error_body(f"no twin {model_id!r}; see /v1/models", 404), status_code=404)
    return oa.model_list({model_id: twins[model_id]})["data"][0]


@http.post("/v1/chat/completions")
async def chat_completions(body: oa.ChatCompletionRequest, dp: DataPlane = allowed("chat")):
    base = await dp.completion_twin(body.model) is None
    if not base:
        dp.twin_id(body.model)
    auto = bool(body.tools) and body.tool_choice in (None, "auto")
    tools = tool_calls.plan(body.tools, body.tool_choice, body.parallel_tool_calls,
                            await dp.tool_format() if auto else None, (await dp.serving())[0] or "the model")
    params = body.sampling(dp.limits, tools)
    messages = [m.text() for m in body.messages]
    if base:  # the base model on its own, no retrieval: a judge, a teacher, any OpenAI client
        if body.sources_top_k is not None:
            raise InvalidRequest("sources_top_k: the base model answers without retrieval; name a twin to retrieve")
        started = await dp.start_generation(messages, params, "http", whole=not body.stream)
    else:
        started = await dp.start_chat(body.model, messages, params, body.sources_top_k, "http", whole=not body.stream)
    cid = oa.completion_id(started.id)
    want_logprobs, structured = params.logprobs is not None, params.json_schema is not None
    if not body.stream:
        joined = await _joined(started.deltas)
        choices = [_chat_choice(i, text, last, logprobs if want_logprobs else None, tools, structured)
                   for i, (text, last, logprobs) in enumerate(joined)]
        return oa.chat_completion(cid, started.model, choices, joined[0][1].prompt_tokens,
                                  sum(last.completion_tokens for _, last, _ in joined), started.sources)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = _chat_events(cid, started.model, started.sources, started.deltas, include_usage, want_logprobs,
                          params.n, tools, structured)
    return StreamingResponse(_sse(events, started.deltas), media_type="text/event-stream", headers=SSE_HEADERS)


def _chat_choice(index: int, text: str, last, logprobs, tools, structured: bool = False) -> dict:
    if structured and last.finish_reason == "no_sources":  # not JSON: OpenAI's refusal field says why
        return oa.chat_choice(index, None, last.finish_reason, refusal=text)
    if tools is None:
        return oa.chat_choice(index, text, last.finish_reason, logprobs)
    content, calls = tool_calls.read_calls(tools, text)
    return oa.chat_choice(index, content, last.finish_reason, logprobs, calls)


async def _joined(deltas: AsyncIterator) -> list[tuple[str, object, list]]:
    """A stream joined per choice (by index): text, last delta, every token's logprobs."""
    parts: dict[int, list] = {}
    for_choice: dict[int, list] = {}
    last: dict[int, object] = {}
    async for delta in deltas:
        parts.setdefault(delta.index, []).append(delta.text)
        for_choice.setdefault(delta.index, []).extend(delta.logprobs)
        last[delta.index] = delta
    return [("".join(parts[i]), last[i], for_choice[i]) for i in sorted(last)]


async def _chat_events(cid: str, model: str, sources: list, deltas: AsyncIterator, include_usage: bool,
                       want_logprobs: bool = False, n: int = 1, tools=None, structured: bool = False):
    """Content streams as it comes. With tools, a choice's text is held until it ends, then sent as
    its tool calls (or as content, when it holds none). Nothing relevant found for a structured
    answer: the twin's reason goes as a refusal, not as content that would not parse."""
    for i in range(n):
        extra = {"sources": [oa.source_json(s) for s in sources]} if i == 0 else {}
        yield oa.chunk_event(cid, model, {"role": "assistant", "content": ""}, index=i, **extra)
    last: dict[int, object] = {}
    held: dict[int, list[str]] = {}
    async for delta in deltas:
        last[delta.index] = delta
        if structured and delta.finish_reason == "no_sources":
            yield oa.chunk_event(cid, model, {"refusal": delta.text}, index=delta.index)
        elif tools is not None:
            held.setdefault(delta.index, []).append(delta.text)
        elif delta.text:
            yield oa.chunk_event(cid, model, {"content": delta.text}, index=delta.index,
                                 logprobs=delta.logprobs if want_logprobs else None)
        if not delta.finish_reason:
            continue
        reason = delta.finish_reason
        if tools is not None:
            content, calls = tool_calls.read_calls(tools, "".join(held.pop(delta.index, [])))
            if calls:
                yield oa.chunk_event(cid, model, {"tool_calls": oa.tool_call_deltas(calls)}, index=delta.index)
                reason = "tool_calls"
            if content:
                yield oa.chunk_event(cid, model, {"content": content}, index=delta.index)
        yield oa.chunk_event(cid, model, {}, reason, index=delta.index)
    if not last:
        yield oa.chunk_event(cid, model, {}, "stop")
    if include_usage and last:
        first = next(iter(last.values()))
        yield oa.usage_event(cid, model, first.prompt_tokens, sum(d.completion_tokens for d in last.values()))


@http.post("/v1/completions")
async def completions(body: oa.CompletionRequest, dp: DataPlane = allowed("generate")):
    """A plain prompt continued, no retrieval, no chat template: by the base model, or by the twin
    that ``model`` names (its fine-tuned adapter: the twin's voice on its own)."""
    params = body.sampling(dp.limits)
    rid, model, deltas = await dp.complete_text(body.text(), params, twin=await dp.completion_twin(body.model),
                                                whole=not body.stream)
    cid = f"cmpl-{rid}"
    want_logprobs = params.logprobs is not None
    if not body.stream:
        joined = await _joined(deltas)
        return oa.text_completion(cid, model, [oa.text_choice(i, text, last.finish_reason,
                                                              logprobs if want_logprobs else None)
                                               for i, (text, last, logprobs) in enumerate(joined)],
                                  joined[0][1].prompt_tokens, sum(last.completion_tokens for _, last, _ in joined))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        last: dict[int, object] = {}
        async for d in deltas:
            last[d.index] = d
            if d.text or d.finish_reason:
                yield oa.text_chunk(cid, model, d.text, d.finish_reason, d.logprobs if want_logprobs else None,
                                    d.index)
        if include_usage and last:
            yield oa.usage_event(cid, model, next(iter(last.values())).prompt_tokens,
                                 sum(d.completion_tokens for d in last.values()), "text_completion")

    return StreamingResponse(_sse(events(), deltas), media_type="text/event-stream", headers=SSE_HEADERS)


@http.post("/v1/feedback")
async def feedback(body: oa.FeedbackRequest, dp: DataPlane = allowed("chat")) -> dict:
    """A user's verdict on an answer: its id (the completion's ``id``), score -1 or 1, a comment."""
    return {"response_id": await dp.feedback(body.response_id, body.score, body.comment), "recorded": True}


async def _sse(events: AsyncIterator[str], deltas: AsyncIterator) -> AsyncIterator[str]:
    """An SSE body: the events, an error event if one comes after the response started, [DONE];
    the deltas are closed however it ends (a client that leaves cancels the generation)."""
    try:
        async for event in events:
            yield event
    except Exception as exc:  # noqa: BLE001 - the response has started: the error travels as an event
        yield error_event(exc)
    finally:
        await deltas.aclose()
    yield oa.sse("[DONE]")


@http.post("/v1/embeddings")
async def embeddings(body: oa.EmbeddingRequest, dp: DataPlane = allowed("embed")) -> dict:
    result = await dp.embed([body.input] if isinstance(body.input, str) else body.input)
    if body.dimensions is not None and body.dimensions != result["dimension"]:
        raise InvalidRequest(f"dimensions: {result['model']} returns {result['dimension']} dimensions and its "
                             f"vectors cannot be cut shorter; remove dimensions or set {result['dimension']}")
    return oa.embeddings(result["vectors"], result["model"], result["prompt_tokens"], body.encoding_format)


# -- JSON mirror of twin.v1 --------------------------------------------------------------------------
@http.post("/v1/search")
async def search(body: SearchBody, dp: DataPlane = allowed("search")) -> dict:
    results = await dp.search(body.query, body.twin, body.category, body.top_k, body.strategy)
    return {"sources": [oa.source_json(r) for r in results]}


@http.post("/v1/crawl")
async def crawl(body: CrawlBody, dp: DataPlane = allowed("crawl")) -> dict:
    return await dp.crawl(body.twin, body.targets, body.source_type, body.index)


@http.post("/v1/generate")
async def generate(body: GenerateBody, dp: DataPlane = allowed("generate")):
    """GenerationService as JSON; streamed as SSE events {"delta"}, the last with "finish_reason" and "usage".
    ``twin``: the twin's fine-tuned model answers (no retrieval)."""
    messages = [m.model_dump() for m in body.messages]
    params = body.sampling(dp.limits)
    if not body.stream:
        r = await dp.generate(messages, params, "http", twin=body.twin)
        return {"text": r["text"], "finish_reason": r["finish_reason"], "model": r["model"],
                "usage": oa.usage_json(r["prompt_tokens"], r["completion_tokens"]),
                "choices": [{"index": i, "text": t, "finish_reason": f} for i, (t, f) in enumerate(r["choices"])]}
    deltas = await dp.generate_stream(messages, params, "http", twin=body.twin)
    return StreamingResponse(_sse(_generate_events(deltas), deltas), media_type="text/event-stream",
                             headers=SSE_HEADERS)


async def _generate_events(deltas: AsyncIterator) -> AsyncIterator[str]:
    async for d in deltas:
        event: dict = {"delta": d.text, "index": d.index}
        if d.finish_reason:
            event.update(finish_reason=d.finish_reason, usage=oa.usage_json(d.prompt_tokens, d.completion_tokens))
        yield oa.sse(event)


@http.get("/v1/stats")
async def stats(dp: DataPlane = allowed("stats")) -> dict:
    """Generation engine counters (queued, active, batches, cancelled): what operators watch."""
    return await dp.stats()

