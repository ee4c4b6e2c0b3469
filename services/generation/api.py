"""The generation contract: what a request asks for (``SamplingParams``, checked against one
``GenerationLimits``), what comes back (``Delta``), and the ``Engine`` protocol every engine under
``engines/`` implements (``engines/__init__.py`` builds the chosen one).

An engine takes a rendered prompt and streams text deltas. Batching concurrent requests is the
engine's own business: the transformers engine batches in its decode loop, TensorRT-LLM in flight.
Every transport (OpenAI JSON, the JSON mirror, gRPC) builds its SamplingParams through
``GenerationLimits.params``: one validation, one meaning of every value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from .errors import InvalidGenerationRequest
from .structured import canonical_schema

if TYPE_CHECKING:
    from llm_twin.config import Settings
    from llm_twin.prompts import ChatTemplate

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    # > 1 discourages tokens already in the prompt or the answer: small models loop without it.
    repetition_penalty: float = 1.0
    top_k: int = 0  # sample among the k likeliest tokens; 0 = all
    # OpenAI semantics: logit -= frequency_penalty * count + presence_penalty * (count > 0), over the answer.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: none; n >= 0: the chosen token's log-probability and the n likeliest
    stop: tuple[str, ...] = ()  # the answer ends before the first of these (Generator.raw does it for every engine)
    # The answer is JSON valid against this schema (canonical text, structured.canonical_schema):
    # the engine masks every token the schema's grammar does not allow (constrained decoding).
    json_schema: str | None = None
    n: int = 1  # choices for the one prompt (Generator.raw fans out; each Delta carries its index)
    # Function tools (JSON text: a list of {"name", "description", "parameters"}) shown to the model:
    # rendered by its chat template where it declares tools, else as a system instruction.
    tools: str | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """Text produced since the previous delta. The last one has ``finish_reason`` set."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token in this delta, when the request asked
    index: int = 0  # which choice (SamplingParams.n) this delta belongs to


MAX_SEED = 2**63 - 1
MAX_STOP = 4
MAX_STOP_CHARS = 200
MAX_TOP_K = 1000
MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_CHOICES = 4


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
                    stop: str | Sequence[str] | None = None, json_schema: str | dict | None = None,
                    n: int | None = None, tools: str | None = None, schema_field: str = "json_schema",
                    default_max_tokens: int = 256, max_new_tokens: int = 1024,
                    default_repetition_penalty: float = 1.0,
                    max_choices: int = DEFAULT_MAX_CHOICES) -> SamplingParams:
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
    n = 1 if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_choices:
        raise InvalidGenerationRequest(f"n must be between 1 and {max_choices} (TWIN_MAX_CHOICES), "
                                       f"got {n!r}")
    schema = None if json_schema is None else canonical_schema(json_schema, schema_field)
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          repetition_penalty=penalty, top_k=top_k, logprobs=logprobs, stop=_stop_strings(stop),
                          json_schema=schema, n=n, tools=tools, **penalties)


@dataclass(frozen=True)
class GenerationLimits:
    """What the server allows and assumes: a request's unset values take these defaults, and
    ``max_tokens`` is bounded by ``max_new_tokens``. Built once from the settings; every transport's
    codec calls :meth:`params`."""

    default_max_tokens: int = 256
    max_new_tokens: int = 1024
    default_repetition_penalty: float = 1.0
    max_choices: int = DEFAULT_MAX_CHOICES

    @classmethod
    def from_settings(cls, settings: Settings) -> GenerationLimits:
        g = settings.generation
        return cls(g.default_max_tokens, g.max_new_tokens, g.repetition_penalty, g.max_choices)

    def params(self, max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
               seed: int | None = None, repetition_penalty: float | None = None, *, top_k: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               logprobs: int | None = None, stop: str | Sequence[str] | None = None,
               json_schema: str | dict | None = None, n: int | None = None, tools: str | None = None,
               schema_field: str = "json_schema") -> SamplingParams:
        """Request values -> SamplingParams; ``None`` means "not set" (the default applies); 0 is a value
        wherever 0 is valid (a seed of 0 is a seed). Raises InvalidGenerationRequest naming the field
        (``schema_field``: what the transport calls the JSON schema)."""
        return sampling_params(max_tokens, temperature, top_p, seed, repetition_penalty, top_k=top_k,
                               presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                               logprobs=logprobs, stop=stop, json_schema=json_schema, n=n, tools=tools,
                               schema_field=schema_field, default_max_tokens=self.default_max_tokens,
                               max_new_tokens=self.max_new_tokens,
                               default_repetition_penalty=self.default_repetition_penalty,
                               max_choices=self.max_choices)


@runtime_checkable
class Engine(Protocol):
    """Everything the rest of the platform calls on an engine (nothing is read with getattr)."""

    model_id: str
    template: ChatTemplate  # the model's chat template, token counting and control tokens (llm_twin.prompts)

    def stream(self, prompt: str, params: SamplingParams, adapter: str | None = None) -> AsyncIterator[Delta]:
        """Deltas until finished, the last with ``finish_reason``. Closing the iterator early cancels
        the generation. ``adapter`` names a loaded LoRA adapter (a twin); None: the base model."""
        ...

    def warm(self) -> None:
        """Prepares what the first request of a kind would otherwise wait for (the transformers
        engine: the grammar engine's tables for guided answers); called once by the serving deployment."""
        ...

    def adapters(self) -> set[str]:
        """The names of the loaded adapters."""
        ...

    def load_adapter(self, name: str, path: str) -> None:
        """Adds a twin's LoRA adapter (a PEFT folder); loading one already loaded does nothing."""
        ...

    def unload_adapter(self, name: str) -> None: ...

    def stats(self) -> dict:
        """Counters for /v1/stats: at least requests, completed, cancelled, active."""
        ...

    def close(self) -> None: ...
