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
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from services.generation.api import GenerationLimits, SamplingParams
from services.generation.errors import InvalidGenerationRequest
from services.generation.structured import JSON_OBJECT

from .tool_calls import ToolPlan, as_messages


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool's result: the call it answers

    @model_validator(mode="after")
    def _text_parts_only(self):
        """A part this text model cannot read (an image, audio, a file) is refused, not dropped:
        answered without it, the answer would pretend to have seen it."""
        readable = ("text", "refusal") if self.role == "assistant" else ("text",)
        for i, part in enumerate(self.content if isinstance(self.content, list) else []):
            kind = part.get("type")
            if kind not in readable:
                raise ValueError(f"content[{i}].type {kind!r} is not supported: this model reads text parts "
                                 f"only ({' or '.join(readable)})")
            if not isinstance(part.get(kind), str):
                raise ValueError(f"content[{i}].{kind} must be a string")
        for i, call in enumerate(self.tool_calls or []):  # OpenAI's shape, or the turn cannot be rendered
            function = call.get("function")
            if call.get("type", "function") != "function" or not isinstance(function, dict) or \
                    not isinstance(function.get("name"), str) or not isinstance(function.get("arguments", ""), str):
                raise ValueError(f"tool_calls[{i}] must be {{\"type\": \"function\", \"id\": ..., \"function\": "
                                 "{\"name\": string, \"arguments\": string}}")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"tool_calls: only an assistant turn makes tool calls, not a {self.role} turn")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool_call_id: a tool turn names the call it answers")
        return self

    def text(self) -> dict:
        """OpenAI allows content parts; only text parts mean anything to a text model. Turns with
        tool calls or results become text every chat template renders (tool_calls.as_messages)."""
        content = self.content if isinstance(self.content, str) or self.content is None else "".join(
            part[part["type"]] for part in self.content)
        message = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.tool_calls or self.role == "tool":
            message = as_messages({**message, "tool_calls": self.tool_calls, "tool_call_id": self.tool_call_id})
        return message


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    description: str | None = None
    strict: bool | None = None  # honoured either way: the answer is always constrained to the schema


class ResponseFormat(BaseModel):
    """``text``; ``json_object`` (any JSON object); ``json_schema`` (valid against the schema): the
    last two by constrained decoding, so the answer parses whatever the model."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is json_schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"response_format.json_schema is only read when type is json_schema, not {self.type}")
        return self

    def constraint(self) -> dict | None:
        """The JSON schema the answer is held to (None: plain text)."""
        if self.type == "json_object":
            return JSON_OBJECT
        return self.json_schema.schema_ if self.type == "json_schema" else None


class StreamOptions(BaseModel):
    # OpenAI's one option; others (vLLM's continuous_usage_stats) are refused by name, not dropped,
    # and a string is not read as a boolean ("false" would otherwise count as set)
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


# OpenAI fields this server does not implement, with the value that means "not used": a request that
# sets one otherwise is refused (400 naming it), never answered as if the field had not been sent.
NOT_IMPLEMENTED = {"logit_bias": None, "functions": None, "function_call": None, "audio": None,
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
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def sampling(self, limits: GenerationLimits, tools: ToolPlan | None = None) -> SamplingParams:
        """This request's sampling, checked against the server's limits (InvalidGenerationRequest);
        ``tools``: the request's tool plan (tool_calls.plan), whose schema constrains the answer."""
        schema, field = None, "response_format.json_schema.schema"
        if self.response_format is not None:
            schema = self.response_format.constraint()
        if tools is not None and tools.schema is not None:
            if schema is not None:
                raise InvalidGenerationRequest("response_format and a tool_choice that forces a call both constrain "
                                               "the answer: send one of them")
            schema, field = tools.schema, "tools[].function.parameters"
        return limits.params(self.max_completion_tokens or self.max_tokens, self.temperature, self.top_p, self.seed,
                             self.repetition_penalty, top_k=self.top_k, presence_penalty=self.presence_penalty,
                             frequency_penalty=self.frequency_penalty, stop=self.stop, logprobs=self._logprobs(),
                             json_schema=schema, n=self.n, tools=tools.tools_json() if tools else None,
                             schema_field=field)

    def _logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _nothing_ignored(self):
        chat = type(self).__name__ == "ChatCompletionRequest"
        if chat and self.top_logprobs is not None and self.logprobs is not True:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.stream_options is not None and not self.stream:
            # as OpenAI answers it: a response that is not streamed always carries its usage
            raise ValueError("stream_options is only read with stream: true; remove it or stream")
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
        for name, value in (("tools", self.tools), ("tool_choice", self.tool_choice),
                            ("parallel_tool_calls", self.parallel_tool_calls)):
            if value is not None and value != []:
                raise ValueError(f"{name}: completions continue a plain prompt; call tools through "
                                 "/v1/chat/completions")
        # chat fields that a completion has no use for: refused, not dropped
        if self.messages:
            raise ValueError("messages: completions continue `prompt`; send messages to /v1/chat/completions")
        if self.top_logprobs is not None:
            raise ValueError("top_logprobs: on completions, logprobs is the number of top tokens (0-20)")
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
    model_config = ConfigDict(extra="forbid")  # nothing a client sets is silently dropped
    input: str | list[str]
    model: str = ""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Honoured only as the embedder's own size: its vectors "
                                   "are not trained to be cut shorter.")
    user: str | None = None  # says nothing about the vectors


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


def chat_choice(index: int, text: str | None, reason: str | None, logprobs=None,
                tool_calls: list[dict] | None = None, refusal: str | None = None) -> dict:
    """One choice of a chat completion; with tool calls, ``content`` is what the model said beside
    them (usually nothing) and the finish reason is ``tool_calls``."""
    message: dict = {"role": "assistant", "content": text, "refusal": refusal}
    if tool_calls:
        message["tool_calls"] = tool_calls
        reason = "tool_calls"
    return {"index": index, "message": message, "finish_reason": finish_reason(reason),
            "logprobs": logprobs_json(logprobs)}


def chat_completion(cid: str, model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int,
                    sources: list) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": choices, "usage": usage_json(prompt_tokens, completion_tokens),
        "sources": [source_json(s) for s in sources],
    }


def chunk_event(cid: str, model: str, delta: dict, reason: str | None = None, logprobs=None, index: int = 0,
                **extra) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason(reason),
                         "logprobs": logprobs_json(logprobs)}], **extra}
    return sse(body)


def tool_call_deltas(calls: list[dict]) -> list[dict]:
    """Tool calls as a stream's delta (OpenAI's shape: each with its position in the list)."""
    return [{"index": i, **call} for i, call in enumerate(calls)]


def text_choice(index: int, text: str, reason: str | None, logprobs=None) -> dict:
    return {"index": index, "text": text, "finish_reason": finish_reason(reason),
            "logprobs": _legacy_logprobs(logprobs)}


def text_completion(cid: str, model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_json(prompt_tokens, completion_tokens)}


def text_chunk(cid: str, model: str, text: str, reason: str | None = None, logprobs=None, index: int = 0) -> str:
    return sse({"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [text_choice(index, text, reason, logprobs)]})


def _legacy_logprobs(items) -> dict | None:
    """The completions API's older logprobs shape."""
    if items is None:
        return None
    return {"tokens": [t.token for t in items], "token_logprobs": [round(t.logprob, 6) for t in items],
            "top_logprobs": [{tok: round(lp, 6) for tok, lp in t.top} for t in items]}


def usage_event(cid: str, model: str, prompt_tokens: int, completion_tokens: int,
                obj: str = "chat.completion.chunk") -> str:
    """The last event of a stream whose request set ``stream_options.include_usage``."""
    return sse({"id": cid, "object": obj, "created": int(time.time()), "model": model,
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
