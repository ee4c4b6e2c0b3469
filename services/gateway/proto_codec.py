"""twin.v1 messages <-> the data plane's values: the one place the gRPC transport reads a request
field or fills a response field (tests/unit/test_codecs.py fails when a request field is read
nowhere here).

proto3 scalars cannot say "unset" except by their zero value; where zero is a meaningful value the
field is ``optional`` and read with ``HasField`` (``seed``: 0 is a seed, on every transport).
Elsewhere a zero means "the server's default", as the .proto comments say.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.generation.api import Delta, GenerationLimits, SamplingParams
from twin.v1 import chat_pb2, common_pb2, crawler_pb2, embedding_pb2, generation_pb2, retrieval_pb2


def sampling(s: generation_pb2.SamplingParams, limits: GenerationLimits) -> SamplingParams:
    return limits.params(s.max_tokens or None, s.temperature, s.top_p or None,
                         s.seed if s.HasField("seed") else None, s.repetition_penalty or None, top_k=s.top_k,
                         presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
                         stop=list(s.stop) or None, json_schema=s.json_schema or None, n=s.n or None,
                         schema_field="sampling.json_schema")


def message(m: common_pb2.ChatMessage) -> dict:
    return {"role": m.role, "content": m.content}


def messages(items) -> list[dict]:
    return [message(m) for m in items]


@dataclass(frozen=True)
class Generate:
    twin: str | None
    messages: list[dict]
    params: SamplingParams


def generate_request(r: generation_pb2.GenerateRequest, limits: GenerationLimits) -> Generate:
    return Generate(r.twin or None, messages(r.messages), sampling(r.sampling, limits))


@dataclass(frozen=True)
class Chat:
    twin: str
    messages: list[dict]
    params: SamplingParams
    top_k: int | None


def chat_request(r: chat_pb2.ChatRequest, limits: GenerationLimits) -> Chat:
    return Chat(r.twin, messages(r.messages), sampling(r.sampling, limits), r.top_k or None)


def crawl_request(r: crawler_pb2.CrawlRequest) -> dict:
    return {"twin": r.twin, "targets": list(r.targets), "source_type": r.source_type, "index": r.index}


def search_request(r: retrieval_pb2.SearchRequest) -> dict:
    return {"query": r.query, "twin": r.twin, "category": r.category, "top_k": r.top_k, "strategy": r.strategy}


def embed_request(r: embedding_pb2.EmbedRequest) -> list[str]:
    return list(r.texts)


def feedback_request(r: chat_pb2.FeedbackRequest) -> dict:
    return {"response_id": r.response_id, "score": r.score, "comment": r.comment}


def list_twins_request(r: retrieval_pb2.ListTwinsRequest) -> None:
    """ListTwins takes no fields."""


# -- responses ----------------------------------------------------------------------------------------
def source(r) -> common_pb2.Source:
    return common_pb2.Source(document_id=r.doc_id, chunk_id=r.chunk_id, title=r.title, link=r.link, author=r.author,
                             category=r.category, text=r.text, score=r.score, similarity=r.similarity)


def usage(d: Delta) -> common_pb2.Usage | None:
    """Usage on the last delta of a stream only."""
    return common_pb2.Usage(prompt_tokens=d.prompt_tokens, completion_tokens=d.completion_tokens) \
        if d.finish_reason else None


def choices(items) -> list[common_pb2.Choice]:
    """(text, finish reason) per choice -> Choice messages."""
    return [common_pb2.Choice(index=i, text=text, finish_reason=reason or "") for i, (text, reason) in enumerate(items)]


def generate_response(r: dict) -> generation_pb2.GenerateResponse:
    return generation_pb2.GenerateResponse(text=r["text"], finish_reason=r["finish_reason"], model=r["model"],
                                           usage=common_pb2.Usage(prompt_tokens=r["prompt_tokens"],
                                                                  completion_tokens=r["completion_tokens"]),
                                           choices=choices(r.get("choices") or [(r["text"], r["finish_reason"])]))


def generate_chunk(d: Delta) -> generation_pb2.GenerateChunk:
    return generation_pb2.GenerateChunk(delta=d.text, finish_reason=d.finish_reason or "", usage=usage(d),
                                        index=d.index)


def chat_response(a) -> chat_pb2.ChatResponse:
    items = [(text, last.finish_reason) for text, last in a.choices] or [(a.text, a.finish_reason)]
    return chat_pb2.ChatResponse(answer=a.text, sources=[source(s) for s in a.sources], finish_reason=a.finish_reason,
                                 model=a.model, id=a.id, usage=common_pb2.Usage(prompt_tokens=a.prompt_tokens,
                                                                                completion_tokens=a.completion_tokens),
                                 choices=choices(items))


def chat_chunk(d: Delta) -> chat_pb2.ChatChunk:
    return chat_pb2.ChatChunk(delta=d.text, finish_reason=d.finish_reason or "", usage=usage(d), index=d.index)


def chat_head(sources: list, rid: str) -> chat_pb2.ChatChunk:
    return chat_pb2.ChatChunk(sources=[source(s) for s in sources], id=rid)


def crawl_response(r: dict) -> crawler_pb2.CrawlResponse:
    return crawler_pb2.CrawlResponse(
        stored=r["stored"], updated=r["updated"], unchanged=r["unchanged"], failed=r["failed"],
        chunks_indexed=r["chunks_indexed"],
        outcomes=[crawler_pb2.CrawlOutcome(target=o["target"], status=o["status"], detail=o["detail"],
                                           document_id=o["doc_id"] or "") for o in r["outcomes"]])


def embed_response(r: dict) -> embedding_pb2.EmbedResponse:
    return embedding_pb2.EmbedResponse(model=r["model"], dimension=r["dimension"], prompt_tokens=r["prompt_tokens"],
                                       embeddings=[embedding_pb2.Embedding(values=v.tolist()) for v in r["vectors"]])


def twins_response(twins: dict) -> retrieval_pb2.ListTwinsResponse:
    return retrieval_pb2.ListTwinsResponse(twins=[
        retrieval_pb2.Twin(id=slug, name=t["name"], documents=t["documents"], chunks=t["chunks"])
        for slug, t in twins.items()])
