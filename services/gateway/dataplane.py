"""The gateway's logic, free of transports: chat, generate, search, embed, crawl, twins, health.

It validates what the transports hand it, calls the services through small async clients
(`clients.py` over Serve handles; in-process fakes in tests) and raises domain errors; the gRPC
and HTTP adapters turn results into their wire formats and errors into status codes.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind

from llm_twin.config import Settings
from llm_twin.documents import author_slug
from llm_twin.keys import Caller
from llm_twin.monitoring import MAX_COMMENT_CHARS
from llm_twin.telemetry import span
from services.chat.core import Chat, Sources
from services.crawler.sources import API_SOURCE_TYPES, SOURCE_TYPES
from services.generation.api import Delta, GenerationLimits, SamplingParams
from services.generation.streams import collect_choices

from .auth import LOCAL, Authorizer
from .fairness import KeyLimiter
from .observe import Observer, current_caller
from .status import InvalidRequest, NotFound, TooLarge

FEEDBACK_WINDOW_S = 2 * 86400
SERVICES = ("twin.v1.CrawlerService", "twin.v1.EmbeddingService", "twin.v1.RetrievalService",
            "twin.v1.GenerationService", "twin.v1.ChatService")


@dataclass
class ChatStart:
    """A chat run up to its first token: every error the request can cause has surfaced."""

    model: str
    sources: list
    deltas: AsyncIterator[Delta]
    id: str = ""  # the answer's id (trace id): records, feedback


@dataclass
class Answer:
    model: str
    sources: list
    text: str  # choice 0
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int  # all choices together
    id: str = ""
    choices: list = field(default_factory=list)  # (text, last Delta) per choice (sampling n)


async def _chained(head: Delta | None, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    try:
        if head is not None:
            yield head
        async for delta in rest:
            yield delta
    finally:
        await rest.aclose()


def api_crawl_target(target: str, source_type: str) -> None:
    """Over the network only web pages, feeds, sitemaps and https git remotes may be crawled: a
    local path, file://, a zip or an ssh remote would read or reach the server's own files."""
    if source_type in SOURCE_TYPES and source_type not in API_SOURCE_TYPES:
        raise InvalidRequest(f"source_type {source_type!r} reads server files and is not offered over the API "
                             "(use `twin crawl` on the machine that holds them)")
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"targets: {target[:200]!r} is not an http(s) URL; over the API only web pages, "
                             "feeds, sitemaps and https:// git repositories can be crawled")
    if source_type == "git" and parts.scheme != "https":
        raise InvalidRequest(f"targets: {target[:200]!r}: git repositories are crawled over https:// only")


async def started(deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """``deltas`` once its first delta is in: what the generation deployment refuses (a prompt
    over the model's limit, a full queue) raises here, before a transport starts its response,
    without a separate validation call to the deployment (a Ray round trip and the prompt
    rendered twice for every stream)."""
    try:
        first = await anext(deltas)
    except StopAsyncIteration:
        return deltas
    except BaseException:
        await deltas.aclose()
        raise

    async def resumed() -> AsyncIterator[Delta]:
        async with aclosing(deltas):
            yield first
            async for delta in deltas:
                yield delta

    return resumed()


def last_content(messages: list[dict]) -> str:
    """What the monitoring record calls the question; "" for no messages, which the generation
    deployment then refuses naming the field (this runs before it sees them)."""
    return str(messages[-1].get("content", "")) if messages else ""


class DataPlane:
    def __init__(self, settings: Settings, *, crawler, retrieval, embedding, generation,
                 authorizer: Authorizer | None = None, observer: Observer | None = None,
                 limiter: KeyLimiter | None = None):
        self.settings = settings
        self.crawler, self.retrieval, self.embedding, self.generation = crawler, retrieval, embedding, generation
        self.chat_core = Chat(retrieval, generation, top_k=settings.retrieval.top_k,
                              min_similarity=settings.retrieval.min_source_similarity,
                              min_relevance=settings.retrieval.min_relevance,
                              min_follow_up_similarity=settings.retrieval.min_follow_up_similarity,
                              max_other_twin_lead=settings.retrieval.max_other_twin_lead,
                              min_asking_lead=settings.retrieval.min_asking_lead)
        self.authorizer = authorizer or Authorizer.from_settings(settings)
        self.observer = observer or Observer()
        self.limiter = limiter or KeyLimiter.from_settings(settings)
        self.limits = GenerationLimits.from_settings(settings)  # what every transport's codec checks against
        self._serving: tuple[float, str, dict] | None = None  # (when read, model id, twin -> adapter version)
        self._tool_format: tuple[str] | None = None  # read once: the model does not change under a replica
        self._known_twins: dict[str, float] = {}  # twin -> when the index was last seen holding it

    async def serving(self, twin: str | None = None) -> tuple[str, dict]:
        """The generation model's id and the adapter version each twin is served with, read from
        the generation deployment at most every 30 s (for monitoring records), or every second while
        ``twin`` has none yet (its adapter loads on its first request)."""
        now = time.monotonic()
        age = now - self._serving[0] if self._serving else None
        if age is None or age > 30 or (twin and twin not in self._serving[2] and age > 1):
            try:
                stats = await self.generation.stats()
                self._serving = (now, await self.generation.model_id(), dict(stats.get("adapters") or {}))
            except Exception:  # noqa: BLE001 - a busy deployment must not fail the request this is for
                return (self._serving[1], self._serving[2]) if self._serving else ("", {})
        return self._serving[1], self._serving[2]

    def authorize(self, authorization: str | None, client: str | None, operation: str,
                  host: str | None = None) -> Caller:
        """Raises Unauthenticated / PermissionDenied / MisdirectedRequest (see auth.py), and
        RateLimited past the key's share (fairness.py). The caller is remembered for this request's
        monitoring record (a context variable: call this from the request's own task, not a thread)."""
        caller = self.authorizer.authorize(authorization, client, operation, host)
        if caller is not LOCAL:
            self.limiter.hold_for_task(caller.name)
        current_caller.set(caller)
        return caller

    def check_messages(self, messages: list[dict]) -> None:
        if len(messages) > self.settings.gateway.max_messages:
            raise TooLarge(f"messages: {len(messages)} messages; the limit is {self.settings.gateway.max_messages} "
                           "(TWIN_MAX_MESSAGES)")
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        if chars > self.settings.gateway.max_request_chars:
            raise TooLarge(f"messages: {chars} characters in all; the limit is "
                           f"{self.settings.gateway.max_request_chars} "
                           "(TWIN_MAX_REQUEST_CHARS)")

    @staticmethod
    def twin_id(twin: str) -> str:
        try:
            return author_slug(twin)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    # -- chat ----------------------------------------------------------------------------------------
    async def start_chat(self, twin: str, messages: list[dict], params: SamplingParams, top_k: int | None,
                         transport: str, whole: bool = False) -> ChatStart:
        """``whole``: the caller answers once the generation is done (not streamed)."""
        self.check_messages(messages)
        with span("twin.chat", SpanKind.SERVER, **{"twin.id": twin, "rpc.system": transport,
                                                   "gen_ai.operation.name": "chat"}):
            events = self.chat_core.stream(twin, messages, params, top_k, whole=whole)
            first = await anext(events)
            assert isinstance(first, Sources)
            base = self.observer.start("chat", self.twin_id(twin), str(messages[-1].get("content", "")), transport,
                                       first.items)
            head = await anext(events, None)
        model = self.twin_id(twin)
        engine, adapters = await self.serving(model)
        base["adapter_version"] = adapters.get(model)
        return ChatStart(model, first.items, self.observer.watch(base, _chained(head, events), engine), base["id"])

    async def chat(self, twin: str, messages: list[dict], params: SamplingParams, top_k: int | None,
                   transport: str) -> Answer:
        started = await self.start_chat(twin, messages, params, top_k, transport, whole=True)
        choices = await collect_choices(started.deltas)
        text, last = choices[0]
        return Answer(started.model, started.sources, text, last.finish_reason or "stop", last.prompt_tokens,
                      sum(d.completion_tokens for _, d in choices), started.id, choices)

    async def feedback(self, response_id: str, score: int, comment: str | None) -> str:
        """A user's -1/+1 on an answer, by the id the answer carried; -> the record id."""
        rid = response_id.removeprefix("chatcmpl-").removeprefix("cmpl-").strip().lower()
        if score not in (-1, 1):
            raise InvalidRequest(f"score must be -1 or 1, got {score!r}")
        comment = comment or ""
        if len(comment) > MAX_COMMENT_CHARS:
            raise InvalidRequest(f"comment has {len(comment)} characters; the limit is {MAX_COMMENT_CHARS}")
        log = self.observer.prompt_log
        if log is None:
            raise NotFound("prompt monitoring is off (TWIN_MONITORING_ENABLED=false, or no MLflow server: "
                           "TWIN_TRACKING_URI): feedback is not recorded")
        # The id is checked by its signature and age alone (response_ids.py): nothing is read for it.
        if not self.observer.ids.valid(rid, FEEDBACK_WINDOW_S):
            raise NotFound(f"response_id: no answer {response_id[:80]!r} from this server in the last two days "
                           "(use the id of a chat or completion answer)")
        caller = current_caller.get()
        log.feedback(rid, score, comment, caller.name if caller else None)
        self.observer.feedback(score)
        return rid

    # -- generation without retrieval ----------------------------------------------------------------
    async def _voice(self, twin: str | None) -> tuple[str | None, str, dict]:
        """(twin id or None, the model name answers report, the monitoring record's extra fields)
        for a generation that names a twin: its fine-tuned adapter answers (refused as NOT_FOUND by
        the generation deployment when it has none); no twin: the base model."""
        engine, adapters = await self.serving()
        if not twin:
            return None, engine, {}
        slug = self.twin_id(twin)
        await self._known_twin(slug)
        return slug, slug, {"adapter_version": adapters.get(slug)}

    async def _known_twin(self, slug: str) -> None:
        """NOT_FOUND unless the index holds the twin (what /v1/models lists), checked before the
        generation deployment sees the name: there every new name costs a registry lookup and one of
        the replica's 8 cached adapter slots, so a stream of made-up names evicted real twins'
        adapters (each then reloaded on its next request). Twins found are remembered for a minute."""
        now = time.monotonic()
        if now - self._known_twins.get(slug, -math.inf) < 60:
            return
        if not await self.retrieval.has_twin(slug):
            raise NotFound(f"no twin {slug!r} in the index (GET /v1/models lists the twins), so no servable "
                           "fine-tuned model either: crawl and index their writing, then train one (`twin train`, "
                           "or a TwinModel), or leave twin/model empty for the base model")
        self._known_twins[slug] = now

    async def generate(self, messages: list[dict], params: SamplingParams, transport: str,
                       twin: str | None = None) -> dict:
        """One call to the generation deployment (its queue is what overload is measured by); its
        errors surface while collecting, before any response exists."""
        self.check_messages(messages)
        slug, model, extra = await self._voice(twin)
        with span("twin.generate", SpanKind.SERVER, **{"rpc.system": transport, "twin.id": slug or ""}):
            base = {**self.observer.start("generate", slug or "", last_content(messages), transport), **extra}
        deltas = self.generation.stream(messages, params, slug, voice=bool(slug), whole=True)
        choices = await collect_choices(self.observer.watch(base, deltas, (await self.serving())[0]))
        text, last = choices[0]
        return {"text": text, "finish_reason": last.finish_reason, "prompt_tokens": last.prompt_tokens,
                "completion_tokens": sum(d.completion_tokens for _, d in choices), "model": model,
                "choices": [(t, d.finish_reason) for t, d in choices]}

    async def generate_stream(self, messages: list[dict], params: SamplingParams, transport: str = "http",
                              twin: str | None = None) -> AsyncIterator[Delta]:
        """Returned once the first delta is in, so a bad request fails before a response starts."""
        return (await self.start_generation(messages, params, transport, twin)).deltas

    async def start_generation(self, messages: list[dict], params: SamplingParams, transport: str,
                               twin: str | None = None, whole: bool = False) -> ChatStart:
        """A generation without retrieval run up to its first token, shaped like a chat's start (no
        sources): also what /v1/chat/completions answers with for ``model: base``."""
        self.check_messages(messages)
        slug, model, extra = await self._voice(twin)
        with span("twin.generate", SpanKind.SERVER, **{"rpc.system": transport, "twin.id": slug or ""}):
            base = {**self.observer.start("generate", slug or "", last_content(messages), transport), **extra}
        deltas = await started(self.generation.stream(messages, params, slug, voice=bool(slug), whole=whole))
        return ChatStart(model, [], self.observer.watch(base, deltas, (await self.serving())[0]), base["id"])

    async def complete_text(self, prompt: str, params: SamplingParams, transport: str = "http",
                            twin: str | None = None, whole: bool = False) -> tuple[str, str, AsyncIterator[Delta]]:
        """/v1/completions: a plain prompt continued, no chat template, by the base model or (``twin``)
        the twin's fine-tuned adapter. -> (id, model name, deltas), returned once the first delta is in."""
        if len(prompt) > self.settings.gateway.max_request_chars:
            raise TooLarge(f"prompt: {len(prompt)} characters; the limit is {self.settings.gateway.max_request_chars} "
                           "(TWIN_MAX_REQUEST_CHARS)")
        slug, model, extra = await self._voice(twin)
        with span("twin.completion", SpanKind.SERVER, **{"rpc.system": transport, "twin.id": slug or ""}):
            base = {**self.observer.start("completion", slug or "", prompt, transport), **extra}
        deltas = await started(self.generation.stream_text(prompt, params, slug, whole=whole))
        return base["id"], model, self.observer.watch(base, deltas, (await self.serving())[0])

    async def tool_format(self) -> str | None:
        """How the generation model's chat template declares tools (ChatTemplate.tool_format)."""
        if self._tool_format is None:
            self._tool_format = ((await self.generation.capabilities()).get("tool_format") or "",)
        return self._tool_format[0] or None

    async def completion_twin(self, model: str) -> str | None:
        """/v1/completions' ``model``: empty, ``base`` or the base model's id -> the base model; else a twin."""
        return None if model in ("", "base") or model == (await self.serving())[0] else model

    # -- retrieval, embeddings, crawling -------------------------------------------------------------
    async def search(self, query: str, twin: str | None, category: str | None, top_k: int | None,
                     strategy: str | None) -> list:
        return await self.retrieval.search(query, twin=twin or None, category=category or None, top_k=top_k or 5,
                                           strategy=strategy or None)

    async def twins(self) -> dict:
        return await self.retrieval.twins()

    async def embed(self, texts: list[str]) -> dict:
        """-> {"vectors", "prompt_tokens", "model", "dimension"}"""
        result = await self.embedding.embed(texts)
        return {**result, **await self.embedding.info()}

    async def crawl(self, twin: str, targets: list[str], source_type: str | None, index: bool) -> dict:
        source_type = source_type or "auto"
        if source_type not in SOURCE_TYPES:
            raise InvalidRequest(f"source_type: unknown {source_type!r}; use one of {', '.join(SOURCE_TYPES)}")
        for target in targets:
            api_crawl_target(target, source_type)
        return await self.crawler.crawl(twin, targets, source_type, index, exact_twin=True)

    async def stats(self) -> dict:
        return {"generation": await self.generation.stats()}

    async def healthy(self) -> bool:
        try:
            await self.generation.model_id()
            await self.retrieval.has_twin("health")
        except Exception:  # noqa: BLE001 - any failure means not serving
            return False
        return True
