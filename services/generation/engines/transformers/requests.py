"""One request inside the decode loop, and how its deltas reach the event loop that waits for them."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from ...api import Delta, SamplingParams


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    generator: object = None  # a seeded torch.Generator when the request has a seed
    adapter: str | None = None  # a twin's LoRA adapter; None decodes with the base model
    logprobs: list = field(default_factory=list)  # TokenLogprobs not yet handed out with a delta
    seen: object = None  # bool per vocabulary entry: in the prompt or the answer (repetition penalty)
    matcher: object = None  # an llguidance matcher when the answer is constrained to a JSON schema (guided.py)
    json_tail: object = None  # guided.JsonTail: where the guided answer's JSON stands
    read: int = 0  # tokens[:read] are in text; tokens[base:read] decode to the text's tail
    base: int = 0

    def emit(self, delta: Delta | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, delta)
        except RuntimeError:  # the consumer's event loop has closed: nobody reads this request
            self.cancelled.set()

    def new_text(self, decode, final: bool) -> str | None:
        """The text the new tokens add, or None while they end inside a multi-byte character (it
        decodes to U+FFFD until its last token; held back unless the answer ends there). Decodes a
        window from the previous delta's tokens on, not the whole answer at every step: the window
        starts before the new tokens, so a tokenizer that drops a word's leading space at the start
        of a decode still spaces them right."""
        before = decode(self.tokens[self.base:self.read], skip_special_tokens=True)
        after = decode(self.tokens[self.base:], skip_special_tokens=True)
        if after.endswith("\ufffd") and not final:
            return None
        delta = after[len(before):]
        self.text += delta
        self.base, self.read = self.read, len(self.tokens)
        return delta


class Outbox:
    """A decode step's deltas, handed to each event loop in one call: one wake-up of the serving
    thread per step rather than one per request (with 8 streams those wake-ups, each taking a
    core from the decode threads, cost more than the sampling)."""

    def __init__(self):
        self._items: dict = {}

    def post(self, r: Request, delta: Delta) -> None:
        self._items.setdefault(r.loop, []).append((r, delta))

    def flush(self) -> None:
        items, self._items = self._items, {}
        for loop, batch in items.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # that consumer's event loop has closed: stop its requests
                for r, _ in batch:
                    r.cancelled.set()


def _deliver(batch: list) -> None:
    for r, delta in batch:
        r.out.put_nowait(delta)
