"""Helpers over a stream of deltas, the same for every engine: merging, pacing, joining, stop
strings, and the choices of one request (``n`` > 1) as one stream."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

from .api import Delta


def merge(deltas: Sequence[Delta]) -> Delta:
    """Consecutive deltas of one choice as one: their text and logprobs joined, the last's finish
    reason and usage."""
    last = deltas[-1]
    if len(deltas) == 1:
        return last
    return Delta("".join(d.text for d in deltas), last.finish_reason, last.prompt_tokens, last.completion_tokens,
                 tuple(p for d in deltas for p in d.logprobs), last.index)


def _merged(pending: list[Delta]) -> list[Delta]:
    """Pending deltas merged per choice, in the order the choices first appear."""
    by_choice: dict[int, list[Delta]] = {}
    for d in pending:
        by_choice.setdefault(d.index, []).append(d)
    return [merge(group) for group in by_choice.values()]


async def interleaved(streams: Sequence[AsyncIterator[Delta]]) -> AsyncIterator[Delta]:
    """The choices of one request as one stream: stream i's deltas tagged ``index=i``, in the order
    they come. The first error from any stream ends it; closing it closes them all."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, deltas: AsyncIterator[Delta]) -> None:
        try:
            async for delta in deltas:
                await queue.put(dataclasses.replace(delta, index=i))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


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
                for merged in _merged(pending):
                    yield merged
                pending = []
        for merged in _merged(pending):
            yield merged


async def collect(deltas: AsyncIterator[Delta]) -> tuple[str, Delta | None]:
    """A stream of one choice joined: the whole text and the last delta (finish reason and usage)."""
    parts, last = [], None
    async for delta in deltas:
        parts.append(delta.text)
        last = delta
    return "".join(parts), last


async def collect_choices(deltas: AsyncIterator[Delta]) -> list[tuple[str, Delta]]:
    """A stream of one or more choices joined: (text, last delta) per choice, by index."""
    parts: dict[int, list[str]] = {}
    last: dict[int, Delta] = {}
    async for delta in deltas:
        parts.setdefault(delta.index, []).append(delta.text)
        last[delta.index] = delta
    return [("".join(parts[i]), last[i]) for i in sorted(last)]


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
