"""Helpers over a stream of deltas, the same for every engine: merging, pacing, joining, stop strings."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

from .api import Delta


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
