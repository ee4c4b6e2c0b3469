"""The OpenAI-compatible wire format: request models and response builders (no Ray, no I/O).

Compatible means the official ``openai`` client works unchanged: chat completions (plain and SSE
streaming, with ``stream_options.include_usage``), text completions, embeddings (float and base64,
which the client asks for by default), models. Sampling: temperature, top_p, top_k (vLLM-style),
seed, stop, presence/frequency penalties, logprobs/top_logprobs. What OpenAI has no field for
rides in extra fields: ``sources`` on the completion (and on the first stream chunk),
``sources_top_k`` on the request. The completion's id is made and signed by the server
(``chatcmpl-<id>``, response_ids.py):
POST /v1/feedback takes it.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.generation.api import GenerationLimits, SamplingParams


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]

    def text(self) -> dict:
        """OpenAI allows content parts; only text parts mean anything to a text model."""
        content = self.content if isinstance(self.content, str) else "".join(
            part.get("text", "") for part in self.content if part.get("type") == "text")
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    include_usage: bool = False


# OpenAI fields this server does not implement, with the value that means "not used": a request that
# sets one otherwise is refused (400 naming it), never answered as if the field had not been sent.
NOT_IMPLEMENTED = {"logit_bias": None, "tools": None, "tool_choice": None, "functions": None, "function_call": None,
                   "parallel_tool_calls": None, "response_format": {"type": "text"}, "audio": None,
                   "modalities": None, "prediction": None, "reasoning_effort": None, "web_search_options": None,
                   "store": False}
INFORMATIONAL = {"user", "metadata", "service_tier"}  # say nothing about the answer


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked below: nothing a client sets is silently dropped
    model: str = Field(description="The twin's id (an author slug from /v1/models).")
    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    top_k: int | None = Field(None, description="Sampling among the k likeliest tokens (vLLM-style); -1 or 0: all.")
    sources_top_k: int | None = Field(None, description="Sources to retrieve, 1..20 (an LLM Twin extension).")
    repetition_penalty: float | None = Field(None, description="HF-style repetition penalty (an extension).")

    def sampling(self, limits: GenerationLimits) -> SamplingParams:
        """This request's sampling, checked against the server's limits (InvalidGenerationRequest)."""
        return limits.params(self.max_completion_tokens or self.max_tokens, self.temperature, self.top_p, self.seed,
                             self.repetition_penalty, top_k=self.top_k, presence_penalty=self.presence_penalty,
                             frequency_penalty=self.frequency_penalty, stop=self.stop, logprobs=self._logprobs())

    def _logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _nothing_ignored(self):
        chat = type(self).__name__ == "ChatCompletionRequest"
        if chat and self.top_logprobs is not None and self.logprobs is not True:
            raise ValueError("top_logprobs needs logprobs: true")
        for name, value in (self.model_extra or {}).items():
            if name in INFORMATIONAL or (name in NOT_IMPLEMENTED and value in (None, NOT_IMPLEMENTED[name])):
                continue
            if name in NOT_IMPLEMENTED:
                raise ValueError(f"{name} is not supported by this server; remove it from the request")
            raise ValueError(f"{name} is not a field of the chat completions API here; remove it")
        return self


class CompletionRequest(ChatCompletionRequest):
    """/v1/completions: a plain prompt continued (no retrieval, no chat template) by the base model
    (``model`` empty, ``base`` or the base model's id) or by a twin's fine-tuned adapter (``model``:
    the twin's id): the twin's voice on its own."""

    messages: list[Message] = []
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)  # the completions API's: how many top tokens
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _one_prompt(self):
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: send one prompt per request (a list of several is not supported)")
        for name, neutral in (("echo", self.echo is False), ("suffix", self.suffix is None),
                              ("best_of", self.best_of is None or self.best_of == 1)):
            if not neutral:
                raise ValueError(f"{name} is not supported by this server; remove it from the request")
        if self.sources_top_k is not None:
            raise ValueError("sources_top_k: completions do not retrieve; use /v1/chat/completions")
        return self

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def _logprobs(self) -> int | None:
        return self.logprobs  # the completions API's: how many top tokens, not a switch


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(min_length=1, max_length=200)
    score: Literal[-1, 1]
    comment: str | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: str | list[str]
    model: str = ""
    encoding_format: Literal["float", "base64"] = "float"


def source_json(result) -> dict:
    return {"document_id": result.doc_id, "chunk_id": result.chunk_id, "title": result.title, "link": result.link,
            "author": result.author, "category": result.category, "text": result.text,
            "score": round(float(result.score), 6), "similarity": round(float(result.similarity), 6)}


def completion_id(request_id: str = "") -> str:
    return f"chatcmpl-{request_id or uuid.uuid4().hex}"


def logprobs_json(items) -> dict | None:
    """Delta.logprobs -> OpenAI's choice.logprobs (None when the request did not ask)."""
    if items is None:
        return None
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": round(logprob, 6), "bytes": list(token.encode())}
    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(tok, lp) for tok, lp in t.top]}
                        for t in items]}


def finish_reason(reason: str | None) -> str | None:
    """Ours -> OpenAI's: answering that nothing relevant was found is a normal stop."""
    return {"no_sources": "stop", "cancelled": "stop"}.get(reason, reason)


def usage_json(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(cid: str, model: str, text: str, reason: str | None, prompt_tokens: int,
                    completion_tokens: int, sources: list, logprobs=None) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason(reason), "logprobs": logprobs_json(logprobs)}],
        "usage": usage_json(prompt_tokens, completion_tokens),
        "sources": [source_json(s) for s in sources],
    }


def chunk_event(cid: str, model: str, delta: dict, reason: str | None = None, logprobs=None, **extra) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason(reason),
                         "logprobs": logprobs_json(logprobs)}], **extra}
    return sse(body)


def text_completion(cid: str, model: str, text: str, reason: str | None, prompt_tokens: int,
                    completion_tokens: int, logprobs=None) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason(reason),
                         "logprobs": _legacy_logprobs(logprobs)}],
            "usage": usage_json(prompt_tokens, completion_tokens)}


def text_chunk(cid: str, model: str, text: str, reason: str | None = None, logprobs=None) -> str:
    return sse({"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish_reason(reason),
                             "logprobs": _legacy_logprobs(logprobs)}]})


def _legacy_logprobs(items) -> dict | None:
    """The completions API's older logprobs shape."""
    if items is None:
        return None
    return {"tokens": [t.token for t in items], "token_logprobs": [round(t.logprob, 6) for t in items],
            "top_logprobs": [{tok: round(lp, 6) for tok, lp in t.top} for t in items]}


def usage_event(cid: str, model: str, prompt_tokens: int, completion_tokens: int) -> str:
    return sse({"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [], "usage": usage_json(prompt_tokens, completion_tokens)})


def sse(body: dict | str) -> str:
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"


def error_body(message: str, status: int, param: str | None = None) -> dict:
    kind = {400: "invalid_request_error", 404: "not_found_error", 503: "service_unavailable"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def embeddings(vectors: np.ndarray, model: str, prompt_tokens: int, encoding: str) -> dict:
    def encode(v: np.ndarray):
        if encoding == "base64":
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        return [float(x) for x in v]

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def model_list(twins: dict[str, dict]) -> dict:
    return {"object": "list", "data": [
        {"id": slug, "object": "model", "created": 0, "owned_by": "llm-twin", "name": info["name"],
         "documents": info["documents"], "chunks": info["chunks"]} for slug, info in twins.items()]}
