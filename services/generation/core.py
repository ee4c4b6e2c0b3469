"""Generation logic: validate a request, render it with the model's chat template, run the backend.

No gRPC, Ray or HTTP here. The backend is passed in (`Generator(backend=...)`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from llm_twin import prompts
from llm_twin.config import Settings, configure_torch_threads

from .backend import Delta, GenerationBackend, SamplingParams, collect
from .errors import InvalidGenerationRequest, ModelUnavailable

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


MAX_STOP = 4
MAX_STOP_CHARS = 200
MAX_TOP_K = 1000
MAX_TOP_LOGPROBS = 20


def _stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list | tuple) or not all(isinstance(s, str) for s in stops):
        raise InvalidGenerationRequest("stop must be a string or a list of strings")
    if len(stops) > MAX_STOP:
        raise InvalidGenerationRequest(f"stop has {len(stops)} strings; the limit is {MAX_STOP}")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise InvalidGenerationRequest(f"each stop string must have 1 to {MAX_STOP_CHARS} characters")
    return tuple(stops)


def sampling_params(max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                    seed: int | None = None, repetition_penalty: float | None = None, *,
                    top_k: int | None = None, presence_penalty: float | None = None,
                    frequency_penalty: float | None = None, logprobs: int | None = None,
                    stop: str | Sequence[str] | None = None,
                    default_max_tokens: int = 256, max_new_tokens: int = 1024,
                    default_repetition_penalty: float = 1.0) -> SamplingParams:
    """Request values -> SamplingParams; ``None`` (or proto zero values) take the defaults.
    ``top_k`` -1 or 0 means no limit (vLLM and OpenAI-style clients send either)."""
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
    top_k = 0 if top_k in (None, -1) else top_k
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= MAX_TOP_K:
        raise InvalidGenerationRequest(f"top_k must be -1 or 0 (no limit) or at most {MAX_TOP_K}, got {top_k!r}")
    penalties = {}
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        value = 0.0 if value is None else float(value)
        if not -2.0 <= value <= 2.0:
            raise InvalidGenerationRequest(f"{name} must be between -2 and 2, got {value}")
        penalties[name] = value
    if logprobs is not None and (isinstance(logprobs, bool) or not 0 <= logprobs <= MAX_TOP_LOGPROBS):
        raise InvalidGenerationRequest(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {logprobs!r}")
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          repetition_penalty=penalty, top_k=top_k, logprobs=logprobs, stop=_stop_strings(stop),
                          **penalties)


async def stop_at(deltas: AsyncIterator[Delta], stops: Sequence[str]) -> AsyncIterator[Delta]:
    """The stream cut before the first stop string, wherever token boundaries fall: text that
    could be the start of a stop string is held back until it is known not to be. Reaching one
    closes the engine's stream (which cancels the rest of the generation)."""
    held, logprobs, last = "", [], None
    try:
        async for delta in deltas:
            last = delta
            held += delta.text
            logprobs.extend(delta.logprobs)
            cut = min((i for i in (held.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                yield Delta(held[:cut], "stop", delta.prompt_tokens, delta.completion_tokens,
                            tuple(_within(logprobs, cut)))
                return
            if delta.finish_reason:
                yield Delta(held, delta.finish_reason, delta.prompt_tokens, delta.completion_tokens, tuple(logprobs))
                return
            keep = max((k for s in stops for k in range(min(len(s) - 1, len(held)), 0, -1)
                        if held.endswith(s[:k])), default=0)
            ready = held[:len(held) - keep]
            if ready:
                within = _within(logprobs, len(ready))
                yield Delta(ready, None, delta.prompt_tokens, delta.completion_tokens, tuple(within))
                held, logprobs = held[len(ready):], logprobs[len(within):]
        if last is not None and held:  # the engine ended without a finish reason
            yield Delta(held, last.finish_reason, last.prompt_tokens, last.completion_tokens, tuple(logprobs))
    finally:
        await deltas.aclose()


def _within(logprobs: list, chars: int) -> list:
    """The tokens whose text lies in the first ``chars`` characters."""
    out, length = [], 0
    for item in logprobs:
        if length >= chars:
            break
        out.append(item)
        length += len(item.token)
    return out


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

            if settings.generation_quantization not in ("auto", "none") or settings.int8_kernel != "auto":
                raise ModelUnavailable("TWIN_GENERATION_QUANTIZATION and TWIN_INT8_KERNEL apply to the transformers "
                                       "engine; TensorRT-LLM quantizes when its engine is built (FP8 on Hopper)")

            backend = TensorRTLLMBackend(path)
        else:
            from .transformers_backend import TransformersBackend

            configure_torch_threads(settings)
            backend = TransformersBackend(path, device=settings.generation_device, dtype=settings.generation_dtype,
                                          quantization=settings.generation_quantization,
                                          max_batch_size=settings.max_batch_size, batch_wait_s=settings.batch_wait_s,
                                          lean=settings.generation_lean, prefill_chunk=settings.prefill_chunk,
                                          prefix_cache_tokens=settings.prefix_cache_tokens,
                                          int8_kernel=settings.int8_kernel)
        return cls(backend=backend, default_max_tokens=settings.default_max_tokens,
                   max_new_tokens=settings.max_new_tokens, max_prompt_tokens=settings.max_prompt_tokens,
                   repetition_penalty=settings.repetition_penalty)

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def sampling(self, max_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 repetition_penalty: float | None = None, **more) -> SamplingParams:
        """``more``: top_k, presence_penalty, frequency_penalty, logprobs, stop (see sampling_params)."""
        return sampling_params(max_tokens, temperature, top_p, seed, repetition_penalty, **more,
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
        async for delta in self.raw(prompt, params, adapter):
            yield delta

    def raw(self, prompt: str, params: SamplingParams, adapter: str | None = None) -> AsyncIterator[Delta]:
        """A rendered prompt (or a plain one: /v1/completions) through the engine, stop strings applied."""
        deltas = self.backend.stream(prompt, params, adapter)
        return stop_at(deltas, params.stop) if params.stop else deltas

    def check_prompt(self, prompt: str) -> str:
        """A plain prompt for /v1/completions: not empty, within the token limit."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidGenerationRequest("prompt is empty")
        if len(prompt) > MAX_MESSAGE_CHARS:
            raise InvalidGenerationRequest(f"prompt has {len(prompt)} characters; the limit is {MAX_MESSAGE_CHARS}")
        n = self.backend.count_tokens(prompt)
        if n > self.max_prompt_tokens:
            raise InvalidGenerationRequest(f"the prompt is {n} tokens; the limit is {self.max_prompt_tokens}")
        return prompts.as_text(prompt, getattr(self.backend, "control_tokens", ()))

    async def complete(self, messages: Sequence[dict], params: SamplingParams,
                       adapter: str | None = None) -> Completion:
        text, last = await collect(self.stream(messages, params, adapter))
        return Completion(text, last.finish_reason or "stop", last.prompt_tokens,
                          last.completion_tokens, self.model_id)
