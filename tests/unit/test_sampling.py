"""Choosing tokens: the whole-batch greedy path and the nucleus shortcut choose exactly what the
row-by-row path does."""

from types import SimpleNamespace

import pytest
import torch

from services.generation.api import SamplingParams
from services.generation.engines.transformers import sampling

VOCAB = 4096


def request(penalty: float, seen: list[int]):
    return SimpleNamespace(params=SamplingParams(max_tokens=8, repetition_penalty=penalty),
                           prompt_ids=seen, tokens=[], seen=None)


def one_by_one(logits, requests):
    return [sampling.sample(sampling.penalise(logits[i], r), r.params, None) for i, r in enumerate(requests)]


@pytest.mark.parametrize("seed", range(5))
def test_greedy_rows_choose_what_each_row_alone_chooses(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, VOCAB, generator=g) * 4
    best = logits.argmax(-1)
    # Penalties that flip the choice: each row has seen its own best token, some the runner-up too.
    requests = [request(p, [int(best[i])] + ([int(logits[i].topk(2).indices[1])] if i % 2 else []))
                for i, p in enumerate([1.0, 1.15, 1.3, 2.0, 1.0, 1.05, 1.5, 1.15])]
    expected = one_by_one(logits, [request(r.params.repetition_penalty, r.prompt_ids) for r in requests])
    assert sampling.greedy_rows(logits, requests) == expected
    assert expected != best.tolist()  # the penalties mattered


def test_plain_greedy_leaves_sampling_logprobs_and_openai_penalties_to_the_row_path():
    assert sampling.plain_greedy(SamplingParams(max_tokens=4, repetition_penalty=1.2))
    assert not sampling.plain_greedy(SamplingParams(max_tokens=4, temperature=0.7))
    assert not sampling.plain_greedy(SamplingParams(max_tokens=4, logprobs=2))
    assert not sampling.plain_greedy(SamplingParams(max_tokens=4, presence_penalty=0.5))
    assert not sampling.plain_greedy(SamplingParams(max_tokens=4, frequency_penalty=0.5))


def full_sort_sample(logits, params, generator):
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p
    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


@pytest.mark.parametrize(("sharpness", "top_p"), [(8.0, 0.9), (8.0, 0.5), (0.5, 0.95), (0.01, 0.9)])
def test_top_p_sampling_keeps_the_same_nucleus_whether_or_not_the_top_256_hold_it(sharpness, top_p):
    """Peaked distributions take the top-256 shortcut, flat ones (0.01) the full sort: seeded
    draws match the full sort's every time."""
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(1)) * sharpness
    params = SamplingParams(max_tokens=4, temperature=0.8, top_p=top_p)
    for seed in range(20):
        assert sampling.sample(logits, params, torch.Generator().manual_seed(seed)) == \
            full_sort_sample(logits, params, torch.Generator().manual_seed(seed))


# -- streamed text in fewer, larger messages -----------------------------------------------------------
def _deltas(gaps: list[float], closed: list):
    from services.generation.api import Delta, TokenLogprob

    async def stream():
        import asyncio

        try:
            for i, gap in enumerate(gaps):
                await asyncio.sleep(gap)
                yield Delta(f"t{i} ", "stop" if i == len(gaps) - 1 else None, 5, i + 1, (TokenLogprob(f"t{i}", -0.1),))
        finally:
            closed.append(True)

    return stream()


def test_coalesced_sends_the_first_at_once_merges_the_rest_and_never_holds_the_last():
    import asyncio

    from services.generation.streams import coalesced

    async def run(interval):
        closed = []
        out = [d async for d in coalesced(_deltas([0.0] + [0.01] * 9, closed), interval)]
        return out, closed

    out, closed = asyncio.run(run(0.035))
    assert out[0].text == "t0 " and len(out) < 10 and closed
    assert "".join(d.text for d in out) == "".join(f"t{i} " for i in range(10))
    assert [len(d.logprobs) for d in out] and sum(len(d.logprobs) for d in out) == 10
    assert out[-1].finish_reason == "stop" and out[-1].completion_tokens == 10 and out[-1].prompt_tokens == 5
    assert all(d.finish_reason is None for d in out[:-1])
    every, _ = asyncio.run(run(0))
    assert [d.text for d in every] == [f"t{i} " for i in range(10)]
    whole, _ = asyncio.run(run(float("inf")))  # a response that is not streamed: the first and the rest
    assert [d.text for d in whole] == ["t0 ", "".join(f"t{i} " for i in range(1, 10))]
    assert whole[-1].finish_reason == "stop" and whole[-1].completion_tokens == 10


def test_closing_a_coalesced_stream_closes_the_one_it_reads():
    import asyncio

    from services.generation.streams import coalesced

    async def run():
        closed = []
        stream = coalesced(_deltas([0.0] * 10, closed), 0.05)
        await anext(stream)
        await stream.aclose()
        return closed

    assert asyncio.run(run()) == [True]


def test_a_chosen_token_tied_with_others_is_listed_first_in_its_top_logprobs():
    """Greedy takes the first of equal logits (argmax); the top list must not show another of them first."""
    logits = torch.full((50,), -5.0)
    logits[[3, 17, 40]] = 2.0  # a three-way tie for first
    logits[8] = 1.0
    token = int(logits.argmax())
    for top in (1, 2, 3, 4):
        item = sampling.logprob(logits, token, top, lambda ids: f"t{ids[0]}")
        assert item.top[0][0] == item.token == f"t{token}" and len(item.top) == top
        assert item.top[0][1] == item.logprob
        assert [p for _, p in item.top] == sorted((p for _, p in item.top), reverse=True)
    logits[8] = 2.0  # tied with the last place: still listed
    item = sampling.logprob(logits, 8, 2, lambda ids: f"t{ids[0]}")
    assert item.top[0][0] == "t8"
