"""The gateway's logic, free of transports: chat, generate, search, embed, crawl, twins, health.

It validates what the transports hand it, calls the services through small async clients
(`clients.py` over Serve handles; in-process fakes in tests) and raises domain errors; the gRPC
and HTTP adapters turn results into their wire formats and errors into status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind

from llm_twin.config import Settings
from llm_twin.keys import Caller
from llm_twin.documents import author_slug
from llm_twin.telemetry import span
from services.chat.core import Chat, Sources
from services.crawler.core import SOURCE_TYPES
from services.generation.backend import Delta, SamplingParams, collect
from services.generation.core import sampling_params

from .auth import Authorizer
from .status import InvalidRequest, TooLarge

SERVICES = ("twin.v1.CrawlerService", "twin.v1.EmbeddingService", "twin.v1.RetrievalService",
            "twin.v1.GenerationService", "twin.v1.ChatService")


@dataclass
class ChatStart:
    """A chat run up to its first token: every error the request can cause has surfaced."""

    model: str
    sources: list
    deltas: AsyncIterator[Delta]


@dataclass
class Answer:
    model: str
    sources: list
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


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
    if source_type in ("folder", "linkedin-export"):
        raise InvalidRequest(f"source_type {source_type!r} reads server files and is not offered over the API "
                             "(use `twin crawl` on the machine that holds them)")
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"targets: {target[:200]!r} is not an http(s) URL; over the API only web pages, "
                             "feeds, sitemaps and https:// git repositories can be crawled")
    if source_type == "git" and parts.scheme != "https":
        raise InvalidRequest(f"targets: {target[:200]!r}: git repositories are crawled over https:// only")


class DataPlane:
    def __init__(self, settings: Settings, *, crawler, retrieval, embedding, generation,
                 authorizer: Authorizer | None = None):
        self.settings = settings
        self.crawler, self.retrieval, self.embedding, self.generation = crawler, retrieval, embedding, generation
        self.chat_core = Chat(retrieval, generation, top_k=settings.chat_top_k,
                              min_similarity=settings.min_source_similarity)
        self.authorizer = authorizer or Authorizer.from_settings(settings)

    def authorize(self, authorization: str | None, client: str | None, operation: str) -> Caller:
        """Raises Unauthenticated / PermissionDenied (see auth.py)."""
        return self.authorizer.authorize(authorization, client, operation)

    def check_messages(self, messages: list[dict]) -> None:
        if len(messages) > self.settings.max_messages:
            raise TooLarge(f"messages: {len(messages)} messages; the limit is {self.settings.max_messages} "
                           "(TWIN_MAX_MESSAGES)")
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        if chars > self.settings.max_request_chars:
            raise TooLarge(f"messages: {chars} characters in all; the limit is {self.settings.max_request_chars} "
                           "(TWIN_MAX_REQUEST_CHARS)")

    def sampling(self, max_tokens=None, temperature=None, top_p=None, seed=None,
                 repetition_penalty=None) -> SamplingParams:
        """Request values (None: the server's default) -> SamplingParams; InvalidGenerationRequest."""
        return sampling_params(max_tokens, temperature, top_p, seed, repetition_penalty,
                               default_max_tokens=self.settings.default_max_tokens,
                               max_new_tokens=self.settings.max_new_tokens,
                               default_repetition_penalty=self.settings.repetition_penalty)

    @staticmethod
    def twin_id(twin: str) -> str:
        try:
            return author_slug(twin)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    # -- chat ----------------------------------------------------------------------------------------
    async def start_chat(self, twin: str, messages: list[dict], params: SamplingParams, top_k: int | None,
                         transport: str) -> ChatStart:
        self.check_messages(messages)
        with span("twin.chat", SpanKind.SERVER, **{"twin.id": twin, "rpc.system": transport,
                                                   "gen_ai.operation.name": "chat"}):
            events = self.chat_core.stream(twin, messages, params, top_k)
            first = await anext(events)
            assert isinstance(first, Sources)
            head = await anext(events, None)
        return ChatStart(self.twin_id(twin), first.items, _chained(head, events))

    async def chat(self, twin: str, messages: list[dict], params: SamplingParams, top_k: int | None,
                   transport: str) -> Answer:
        started = await self.start_chat(twin, messages, params, top_k, transport)
        text, last = await collect(started.deltas)
        return Answer(started.model, started.sources, text, last.finish_reason or "stop", last.prompt_tokens,
                      last.completion_tokens)

    # -- generation without retrieval ----------------------------------------------------------------
    async def generate(self, messages: list[dict], params: SamplingParams, transport: str) -> dict:
        self.check_messages(messages)
        with span("twin.generate", SpanKind.SERVER, **{"rpc.system": transport}):
            return await self.generation.generate(messages, params)

    async def generate_stream(self, messages: list[dict], params: SamplingParams) -> AsyncIterator[Delta]:
        """Validated before the first delta, so a bad request fails before a response starts."""
        self.check_messages(messages)
        await self.generation.validate(messages)
        return self.generation.stream(messages, params)

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
