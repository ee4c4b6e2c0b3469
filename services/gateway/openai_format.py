"""The OpenAI-compatible wire format: request models and response builders (no Ray, no I/O).

Compatible means the official ``openai`` client works unchanged: chat completions (plain and SSE
streaming, with ``stream_options.include_usage``), embeddings (float and base64, which the client
asks for by default), models. What OpenAI has no field for rides in extra fields: ``sources`` on
the completion (and on the first stream chunk), ``top_k`` on the request.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


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
NOT_IMPLEMENTED = {"stop": None, "logprobs": False, "top_logprobs": None, "presence_penalty": 0, "frequency_penalty": 0,
                   "logit_bias": None, "tools": None, "tool_choice": None, "functions": None, "function_call": None,
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
    top_k: int | None = Field(None, description="Sources to retrieve (an LLM Twin extension).")
    repetition_penalty: float | None = Field(None, description="HF-style repetition penalty (an extension).")

    @model_validator(mode="after")
    def _nothing_ignored(self):
        for name, value in (self.model_extra or {}).items():
            if name in INFORMATIONAL or (name in NOT_IMPLEMENTED and value in (None, NOT_IMPLEMENTED[name])):
                continue
            if name in NOT_IMPLEMENTED:
                raise ValueError(f"{name} is not supported by this server; remove it from the request")
            raise ValueError(f"{name} is not a field of the chat completions API here; remove it")
        return self


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: str | list[str]
    model: str = ""
    encoding_format: Literal["float", "base64"] = "float"


def source_json(result) -> dict:
    return {"document_id": result.doc_id, "chunk_id": result.chunk_id, "title": result.title, "link": result.link,
            "author": result.author, "category": result.category, "text": result.text,
            "score": round(float(result.score), 6), "similarity": round(float(result.similarity), 6)}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def finish_reason(reason: str | None) -> str | None:
    """Ours -> OpenAI's: answering that nothing relevant was found is a normal stop."""
    return {"no_sources": "stop", "cancelled": "stop"}.get(reason, reason)


def usage_json(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(cid: str, model: str, text: str, reason: str | None, prompt_tokens: int,
                    completion_tokens: int, sources: list) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason(reason), "logprobs": None}],
        "usage": usage_json(prompt_tokens, completion_tokens),
        "sources": [source_json(s) for s in sources],
    }


def chunk_event(cid: str, model: str, delta: dict, reason: str | None = None, **extra) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason(reason), "logprobs": None}],
            **extra}
    return sse(body)


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
