"""Generation logic: validate a request, render it with the model's chat template, run the backend.

No gRPC, Ray or HTTP here. The backend is passed in (`Generator(backend=...)`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from llm_twin import prompts
from llm_twin.config import Settings, configure_torch_threads

from .backend import Delta, GenerationBackend, SamplingParams, collect
from .errors import InvalidGenerationRequest

ROLES = ("system", "user", "assistant")
MAX_SEED = 2**63 - 1
MAX_MESSAGE_CHARS = 32_000


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str


def sampling_params(max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                    seed: int | None = None, repetition_penalty: float | None = None, *,
                    default_max_tokens: int = 256, max_new_tokens: int = 1024,
                    default_repetition_penalty: float = 1.0) -> SamplingParams:
    """Request values -> SamplingParams; ``None`` (or proto zero values) take the defaults."""
    max_tokens = default_max_tokens if max_tokens is None else int(max_tokens)
    if not 1 <= max_tokens <= max_new_tokens:
        raise InvalidGenerationRequest(f"max_tokens must be between 1 and {max_new_tokens}, got {max_tokens}")
    temperature = 0.0 if temperature is None else float(temperature)
    if not 0.0 <= temperature <= 2.0:
        raise InvalidGenerationRequest(f"temperature must be between 0 and 2, got {temperature}")
    top_p = 1.0 if top_p is None else float(top_p)
    if not 0.0 < top_p <= 1.0:
        raise InvalidGenerationRequest(f"top_p must be in (0, 1], got {top_p}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise InvalidGenerationRequest(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    penalty = default_repetition_penalty if repetition_penalty is None else float(repetition_penalty)
    if not 1.0 <= penalty <= 2.0:
        raise InvalidGenerationRequest(f"repetition_penalty must be between 1 and 2, got {penalty}")
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          repetition_penalty=penalty)


class Generator:
    def __init__(self, backend: GenerationBackend, *, default_max_tokens: int = 256,
                 max_new_tokens: int = 1024, max_prompt_tokens: int = 4096, repetition_penalty: float = 1.0):
        self.backend = backend
        self.default_max_tokens = default_max_tokens
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.repetition_penalty = repetition_penalty

    @classmethod
    def from_settings(cls, settings: Settings, model: str | None = None) -> Generator:
        """The configured engine over ``model`` (default: the settings' generation model)."""
        from .model_store import resolve_model

        path = resolve_model(model or settings.generation_model, settings.data_dir)
        if settings.generation_engine == "tensorrt-llm":
            from .tensorrt_backend import TensorRTLLMBackend

            backend = TensorRTLLMBackend(path)
        else:
            from .transformers_backend import TransformersBackend

            configure_torch_threads(settings)
            backend = TransformersBackend(path, device=settings.generation_device, dtype=settings.generation_dtype,
                                          max_batch_size=settings.max_batch_size, batch_wait_s=settings.batch_wait_s)
        return cls(backend=backend, default_max_tokens=settings.default_max_tokens,
                   max_new_tokens=settings.max_new_tokens, max_prompt_tokens=settings.max_prompt_tokens,
                   repetition_penalty=settings.repetition_penalty)

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def sampling(self, max_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 repetition_penalty: float | None = None) -> SamplingParams:
        return sampling_params(max_tokens, temperature, top_p, seed, repetition_penalty,
                               default_max_tokens=self.default_max_tokens, max_new_tokens=self.max_new_tokens,
                               default_repetition_penalty=self.repetition_penalty)

    def prompt(self, messages: Sequence[dict]) -> str:
        """Validated messages -> the rendered prompt; raises InvalidGenerationRequest."""
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
        specials = getattr(self.backend, "control_tokens", ())
        prompt = self.backend.render([{**m, "content": prompts.as_text(m["content"], specials)} for m in messages])
        n = self.backend.count_tokens(prompt)
        if n > self.max_prompt_tokens:
            raise InvalidGenerationRequest(
                f"the prompt is {n} tokens; the limit is {self.max_prompt_tokens} (shorten the conversation)")
        return prompt

    async def stream(self, messages: Sequence[dict], params: SamplingParams,
                     adapter: str | None = None) -> AsyncIterator[Delta]:
        prompt = self.prompt(messages)
        async for delta in self.backend.stream(prompt, params, adapter):
            yield delta

    async def complete(self, messages: Sequence[dict], params: SamplingParams,
                       adapter: str | None = None) -> Completion:
        text, last = await collect(self.stream(messages, params, adapter))
        return Completion(text, last.finish_reason or "stop", last.prompt_tokens,
                          last.completion_tokens, self.model_id)
