"""The one interface every generation engine implements (transformers now, TensorRT-LLM on GPU).

An engine takes a rendered prompt and streams text deltas. Batching concurrent requests is the
engine's own business: the transformers backend batches in its decode loop, TensorRT-LLM in flight.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal, Protocol

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
    stop: tuple[str, ...] = ()  # the answer ends before the first of these (Generator.stream does it for every engine)


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


def merge(deltas: Sequence[Delta]) -> Delta:
    """Consecutive deltas of one stream as one: their text and logprobs joined, the last's finish
    reason and usage."""
    last = deltas[-1]
    if len(deltas) == 1:
        return last
    return Delta("".join(d.text for d in deltas), last.finish_reason, last.prompt_tokens, last.completion_tokens,
                 tuple(p for d in deltas for p in d.logprobs))


async def coalesced(deltas: AsyncIterator[Delta], interval_s: float) -> AsyncIterator[Delta]:
    """``deltas`` merged so that at most one goes out per ``interval_s`` (the first, which carries
    the time to first token, and the last at once): each message through the serving hops carries
    a few tokens (vLLM's stream interval). Closing this closes ``deltas``."""
    async with aclosing(deltas):
        if interval_s <= 0:
            async for delta in deltas:
                yield delta
            return
        pending, sent_at = [], None
        async for delta in deltas:
            pending.append(delta)
            now = time.monotonic()
            if sent_at is None or delta.finish_reason or now - sent_at >= interval_s:
                sent_at = now
                yield merge(pending)
                pending = []
        if pending:
            yield merge(pending)


async def collect(deltas: AsyncIterator[Delta]) -> tuple[str, Delta | None]:
    """A stream joined: the whole text and the last delta (finish reason and usage)."""
    parts, last = [], None
    async for delta in deltas:
        parts.append(delta.text)
        last = delta
    return "".join(parts), last


class GenerationBackend(Protocol):
    model_id: str
    # Optional: the strings its tokenizer turns into control tokens (llm_twin.prompts.control_tokens);
    # the Generator keeps them as text in user content and passages. An engine without it gets none.
    # control_tokens: frozenset[str]

    def render(self, messages: Sequence[dict]) -> str:
        """Messages -> the prompt string, with the model's own chat template."""

    def count_tokens(self, text: str) -> int: ...

    def stream(self, prompt: str, params: SamplingParams, adapter: str | None = None) -> AsyncIterator[Delta]:
        """Deltas until finished. Closing the iterator early cancels the generation. ``adapter``
        names a loaded LoRA adapter (a twin); None generates with the base model."""

    def load_adapter(self, name: str, path: str) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def stats(self) -> dict: ...

    def close(self) -> None: ...
