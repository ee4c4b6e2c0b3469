"""Generation logic: validate a request, render it with the model's chat template, run the engine.

No gRPC, Ray or HTTP here. The engine is passed in (`Generator(engine)`), or built from the
settings by the registry (`Generator.from_settings`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from llm_twin import prompts
from llm_twin.config import Settings, configure_torch_threads

from . import engines
from .api import MAX_SEED, Delta, Engine, GenerationLimits, SamplingParams
from .errors import InvalidGenerationRequest
from .streams import collect, interleaved, stop_at

ROLES = ("system", "user", "assistant")
MAX_MESSAGE_CHARS = 32_000


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index`` of ``params.n``: one row, its own seed (``seed + index``) when seeded."""
    seed = None if params.seed is None else (params.seed + index) % (MAX_SEED + 1)
    return dataclasses.replace(params, n=1, seed=seed)


class Generator:
    def __init__(self, engine: Engine, *, limits: GenerationLimits | None = None, max_prompt_tokens: int = 4096):
        self.engine = engine
        self.limits = limits or GenerationLimits()
        self.max_prompt_tokens = max_prompt_tokens

    @classmethod
    def from_settings(cls, settings: Settings, model: str | None = None, **options) -> Generator:
        """The configured engine over ``model`` (default: the settings' generation model);
        ``options`` override the engine's options (``quantization="none"``)."""
        from .model_store import resolve_model

        path = resolve_model(model or settings.generation.model, settings.data_dir)
        configure_torch_threads(settings)
        chosen = settings.engine_options
        if options:
            chosen = type(chosen).model_validate({**chosen.model_dump(), **options})
        engine = engines.build(settings.generation.engine, path, chosen)
        return cls(engine, limits=GenerationLimits.from_settings(settings),
                   max_prompt_tokens=settings.generation.max_prompt_tokens)

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    def prompt(self, messages: Sequence[dict], tools: str | None = None) -> str:
        """Validated messages (and the request's function tools, JSON text) -> the rendered prompt;
        raises InvalidGenerationRequest."""
        if not messages:
            raise InvalidGenerationRequest("messages is empty: send at least one user message")
        for i, m in enumerate(messages):
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise InvalidGenerationRequest(f"messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}")
            if not isinstance(content, str) or not content.strip():
                raise InvalidGenerationRequest(f"messages[{i}].content is empty")
            if len(content) > MAX_MESSAGE_CHARS:
                raise InvalidGenerationRequest(
                    f"messages[{i}].content has {len(content)} characters; the limit is {MAX_MESSAGE_CHARS}")
        if messages[-1]["role"] != "user":
            raise InvalidGenerationRequest("the last message must be the user's")
        template = self.engine.template
        prompt = template.render([{**m, "content": prompts.as_text(m["content"], template.control_tokens)}
                                  for m in messages], json.loads(tools) if tools else None)
        n = template.count_tokens(prompt)
        if n > self.max_prompt_tokens:
            raise InvalidGenerationRequest(
                f"the prompt is {n} tokens; the limit is {self.max_prompt_tokens} (shorten the conversation)")
        return prompt

    async def stream(self, messages: Sequence[dict], params: SamplingParams,
                     adapter: str | None = None) -> AsyncIterator[Delta]:
        prompt = self.prompt(messages, params.tools)
        async for delta in self.raw(prompt, params, adapter):
            yield delta

    def raw(self, prompt: str, params: SamplingParams, adapter: str | None = None) -> AsyncIterator[Delta]:
        """A rendered prompt (or a plain one: /v1/completions) through the engine, stop strings
        applied. ``params.n`` > 1: that many choices, each a row of the engine's batch (the lean
        loop prefills the prompt once and copies it to the others from its prefix cache), with
        seeds ``seed``, ``seed + 1``, ... so that seeded choices differ and repeat."""
        if params.n == 1:
            return self._one(prompt, params, adapter)
        return interleaved([self._one(prompt, choice_params(params, i), adapter) for i in range(params.n)])

    def _one(self, prompt: str, params: SamplingParams, adapter: str | None) -> AsyncIterator[Delta]:
        deltas = self.engine.stream(prompt, params, adapter)
        return stop_at(deltas, params.stop) if params.stop else deltas

    def check_prompt(self, prompt: str) -> str:
        """A plain prompt for /v1/completions (Generate): not empty, within the token limit; then
        tokenized as written, control tokens included. The caller writes the whole prompt, so there
        is no one else's role in it to forge (the chat routes keep user content and passages as text:
        prompts.as_text), and a prompt a client rendered with the chat template itself must reach the
        model as that template, as vLLM's and llama-server's completions take it; kept as text, the
        markers cost ~40 extra tokens on a RAG-sized prompt and the model no longer saw a chat."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidGenerationRequest("prompt is empty")
        if len(prompt) > MAX_MESSAGE_CHARS:
            raise InvalidGenerationRequest(f"prompt has {len(prompt)} characters; the limit is {MAX_MESSAGE_CHARS}")
        n = self.engine.template.count_tokens(prompt)
        if n > self.max_prompt_tokens:
            raise InvalidGenerationRequest(f"the prompt is {n} tokens; the limit is {self.max_prompt_tokens}")
        return prompt

    async def complete(self, messages: Sequence[dict], params: SamplingParams,
                       adapter: str | None = None) -> Completion:
        text, last = await collect(self.stream(messages, params, adapter))
        return Completion(text, last.finish_reason or "stop", last.prompt_tokens,
                          last.completion_tokens, self.model_id)
