"""The transformers engine's scheduler without a model: it admits waiting requests, turns each
row's logits into its next token and text, hands deltas to the request's event loop, and retires
what finished or left. The decode loops only call these public methods."""

from __future__ import annotations

import asyncio

import torch

from services.generation.api import SamplingParams
from services.generation.engines.transformers.requests import Request
from services.generation.engines.transformers.scheduler import Scheduler

VOCAB = ["<eos>", "a", "b", "c", "d"]


class Tokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(VOCAB[i] for i in ids if not (skip_special_tokens and i == 0))


class Loop:
    """Stands in for an event loop: deliveries run at once."""

    def call_soon_threadsafe(self, fn, *args):
        fn(*args)


def request(max_tokens: int = 3, **params) -> Request:
    return Request([1, 2], SamplingParams(max_tokens=max_tokens, **params), Loop(), asyncio.Queue())


def logits_for(*tokens: int) -> torch.Tensor:
    out = torch.full((len(tokens), len(VOCAB)), -10.0)
    for row, token in enumerate(tokens):
        out[row, token] = 10.0
    return out


def drained(r: Request) -> list:
    items = []
    while not r.out.empty():
        items.append(r.out.get_nowait())
    return items


def test_admit_step_and_retire():
    s = Scheduler(Tokenizer(), {0}, 0, max_batch_size=2, batch_wait_s=0)
    first, second, third = request(), request(), request()
    for r in (first, second, third):
        s.submit(r)
    assert s.next_batch() == [first, second] and s.stats()["queued"] == 1
    assert s.step([first, second], logits_for(3, 4)) == [3, 4]
    s.flush()
    assert [d.text for d in drained(first)] == ["c"] and [d.text for d in drained(second)] == ["d"]
    second.cancelled.set()  # its client left
    assert s.retire(second) and not s.retire(first)
    assert s.admit(5) == [third] and s.in_flight == [first, third]
    s.step([first], logits_for(0))  # end of sequence
    s.flush()
    last = drained(first)[-1]
    assert (last.finish_reason, last.completion_tokens, first.done) == ("stop", 1, True)
    stats = s.stats()
    assert (stats["requests"], stats["completed"], stats["cancelled"], stats["generated_tokens"]) == (3, 1, 1, 2)


def test_max_tokens_ends_a_request_with_length():
    s = Scheduler(Tokenizer(), {0}, 0, max_batch_size=4, batch_wait_s=0)
    r = request(max_tokens=2)
    for token in (1, 2):
        s.step_one(r, logits_for(token)[0])
    s.flush()
    deltas = drained(r)
    assert "".join(d.text for d in deltas) == "ab" and deltas[-1].finish_reason == "length"


def test_a_row_that_fails_ends_alone():
    s = Scheduler(Tokenizer(), {0}, 0, max_batch_size=4, batch_wait_s=0)
    good, bad = request(temperature=1.0, seed=1), request(temperature=1.0, top_p=0.5)
    real = s.sample

    def failing(logits, params, generator):
        if params.top_p == 0.5:
            raise RuntimeError("boom")
        return real(logits, params, generator)

    s.sample = failing
    tokens = s.step([good, bad], logits_for(3, 3))
    s.flush()
    assert tokens[1] == s.pad_id and bad.done and not good.done
    assert isinstance(drained(bad)[-1], Exception) and drained(good)[0].text == "c"


class Guides:
    """Stands in for guided.Guides: the 'grammar' allows exactly the tokens of ``script`` in order
    and is complete after the last one; a matcher named 'broken' fails."""

    def __init__(self):
        self.closing = []

    def constrain(self, logits, rows):
        failed = []
        for row, matcher, _tail, left, closing_at in rows:
            if matcher["name"] == "broken":
                failed.append((row, RuntimeError("grammar failure")))
                continue
            self.closing.append(left if left <= closing_at else None)
            allowed = matcher["script"][matcher["at"]]
            keep = logits[row, allowed].clone()
            logits[row].fill_(float("-inf"))
            logits[row, allowed] = keep
        return failed

    def advance(self, matcher, token):
        assert token == matcher["script"][matcher["at"]]
        matcher["at"] += 1
        return matcher["at"] == len(matcher["script"])


def test_guided_rows_are_masked_and_end_when_their_grammar_completes():
    """The mask decides the token whatever the logits say; a complete grammar ends the answer with
    "stop" before max_tokens; a grammar that fails ends its own request, the others go on."""
    s = Scheduler(Tokenizer(), {0}, 0, max_batch_size=4, batch_wait_s=0, guides=Guides())
    guided, plain, broken = request(max_tokens=9), request(max_tokens=9), request(max_tokens=9)
    guided.matcher = {"name": "ok", "script": [2, 4], "at": 0}
    broken.matcher = {"name": "broken", "script": [1], "at": 0}
    assert s.step([guided, plain, broken], logits_for(1, 1, 1)) == [2, 1, s.pad_id]
    assert broken.done and isinstance(drained(broken)[-1], Exception)
    s.step_one(guided, logits_for(3)[0])  # a prompt just prefilled goes through the mask as well
    s.flush()
    assert guided.done and guided.text == "bd" and drained(guided)[-1].finish_reason == "stop"
    assert not plain.done


def test_guided_rows_narrow_to_closing_tokens_near_max_tokens():
    guides = Guides()
    s = Scheduler(Tokenizer(), {0}, 0, max_batch_size=4, batch_wait_s=0, guides=guides)
    r = request(max_tokens=40)
    r.matcher = {"name": "ok", "script": [1] * 40, "at": 0}
    for _ in range(39):
        s.step([r], logits_for(1))
    # closing_budget(40) = 10: the last ten steps are asked to close the document, told the tokens left
    assert guides.closing == [None] * 30 + list(range(10, 1, -1))
