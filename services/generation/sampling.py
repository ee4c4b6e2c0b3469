"""Choosing each next token of one request: penalties, temperature, top-k/top-p, seeded sampling,
and the log-probabilities OpenAI's API reports. Shared by both decode loops."""

from __future__ import annotations

import torch

from .backend import SamplingParams, TokenLogprob
from .core import MAX_SEED
from .errors import InvalidGenerationRequest


def penalise(logits, r):
    """HF's repetition penalty (seen tokens' logits divided when positive, multiplied when
    negative), then OpenAI's presence and frequency penalties over the answer so far. ``r`` is
    the request: its prompt, answer so far and ``seen`` mask (made here, kept up by the loop)."""
    p = r.params
    if p.repetition_penalty != 1.0:
        if r.seen is None:
            r.seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            r.seen[torch.tensor(r.prompt_ids + r.tokens, dtype=torch.long, device=logits.device)] = True
        penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
        logits = torch.where(r.seen, penalised, logits)
    if (p.presence_penalty or p.frequency_penalty) and r.tokens:
        ids, counts = torch.unique(torch.tensor(r.tokens, device=logits.device), return_counts=True)
        logits = logits.clone()
        logits[ids] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty
    return logits


def logprob(logits, token: int, top: int, decode) -> TokenLogprob:
    """Log-probabilities of the distribution the token was chosen from (penalties applied,
    before temperature, as OpenAI reports them)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logp, top).indices.tolist() if top else []
    return TokenLogprob(decode([token]), float(logp[token]), tuple((decode([i]), float(logp[i])) for i in best))


def seeded_generator(seed: int | None, device: str):
    if seed is None:
        return None
    g = torch.Generator(device=device)
    try:
        g.manual_seed(seed)
    except (RuntimeError, TypeError, OverflowError, ValueError):
        raise InvalidGenerationRequest(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}") from None
    return g


def sample(logits, params: SamplingParams, generator) -> int:
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
