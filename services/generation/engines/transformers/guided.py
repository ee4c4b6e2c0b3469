"""Constrained decoding for the transformers engine: each guided request holds an llguidance
matcher (its schema's grammar, advanced by every token it takes); before a row samples, the
tokens the grammar does not allow next are masked to -inf.

It sits where logits become tokens (the scheduler), so both decode loops, continuous batching,
chunked prefill, the prefix cache and per-row adapters are untouched by it: a mask changes which
token a row picks, nothing about how the row was computed. A schema's grammar is compiled once
(its lexer and parser tables, ~1-2 ms) and each request starts from a copy of that matcher.

A small model can loop inside a JSON string until max_tokens and leave a document that does not
parse. So as a guided answer nears its max_tokens (the last :func:`closing_budget` tokens), among
the tokens the grammar allows only those that close something (a quote, a brace, a bracket, or the
end) stay in: the answer closes its strings and containers and ends as a complete document, unless
the schema needs more than the tokens left (then it ends with ``length``, like any answer).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ...errors import InvalidGenerationRequest
from ...structured import grammar

CACHED_GRAMMARS = 256
CLOSING_CHARS = frozenset("}] ")


def closing_budget(max_tokens: int) -> int:
    """The last tokens of a guided answer in which it closes what is open: a quarter, 8 to 48."""
    return min(48, max(8, max_tokens // 4))


class Guides:
    def __init__(self, tokenizer, vocab_size: int):
        self._hf_tokenizer, self.vocab_size = tokenizer, vocab_size
        self._tokenizer = None
        self._compiled: OrderedDict[str, object] = OrderedDict()  # canonical schema -> a fresh matcher
        self._lock = threading.Lock()
        # bool per vocabulary entry: the token only closes (see closing_budget), outside a string / inside one
        self._closers: tuple | None = None
        self._eos_ids = {i for i in (tokenizer.eos_token_id,) if i is not None}

    def matcher(self, schema: str):
        """A matcher at the start of ``schema``'s grammar (compiled once per schema, then copied).
        Runs off the event loop: the first call builds the tokenizer's token trie (~1 s here)."""
        import llguidance

        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self.vocab_size)
                self._closers = self._closing_tokens()
            prototype = self._compiled.get(schema)
            if prototype is None:
                prototype = llguidance.LLMatcher(self._tokenizer, grammar(schema))
                if prototype.is_error():
                    raise InvalidGenerationRequest(f"json_schema cannot be used for constrained decoding: "
                                                   f"{prototype.get_error()[:300]}")
                self._compiled[schema] = prototype
                while len(self._compiled) > CACHED_GRAMMARS:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(schema)
            return prototype.deep_copy()

    def _closing_tokens(self) -> tuple:
        """(outside a string: tokens of closing braces and brackets only, and the end of sequence;
        inside one: a quote that ends it, optionally followed by closing braces and brackets)."""
        import torch

        outside = torch.zeros(self.vocab_size, dtype=torch.bool)
        inside = torch.zeros(self.vocab_size, dtype=torch.bool)
        pieces = self._hf_tokenizer.batch_decode([[i] for i in range(len(self._hf_tokenizer))])
        for i, piece in enumerate(pieces[:self.vocab_size]):
            if piece.strip() and set(piece) <= CLOSING_CHARS:
                outside[i] = True
            elif piece.startswith('"') and set(piece[1:]) <= CLOSING_CHARS:
                inside[i] = True
        for i in self._eos_ids:
            if i < self.vocab_size:
                outside[i] = True
        return outside, inside

    def constrain(self, logits, matcher, closing: str | None = None) -> None:
        """``logits`` (one row, a view into the step's logits) masked in place to what ``matcher``
        allows (entries past the tokenizer's vocabulary, padding of the embedding, to -inf too);
        ``closing`` (the answer so far, near its max_tokens): narrowed to the allowed tokens that
        close something, when there are any."""
        import llguidance.torch as lt
        import torch

        mask = lt.allocate_token_bitmask(1, self.vocab_size)
        lt.fill_next_token_bitmask(matcher, mask, 0)
        if matcher.is_error():
            raise RuntimeError(f"constrained decoding failed: {matcher.get_error()[:300]}")
        lt.apply_token_bitmask_inplace(logits.unsqueeze(0) if logits.dim() == 1 else logits,
                                       mask.to(logits.device, non_blocking=True))
        state = None if closing is None else string_state(closing)
        if state is not None:
            closers = self._closers[state].to(logits.device)
            head = logits[..., :self.vocab_size]
            narrowed = head.masked_fill(~closers, float("-inf"))
            if bool(torch.isfinite(narrowed).any()):
                head.copy_(narrowed)

    @staticmethod
    def advance(matcher, token: int) -> bool:
        """``token`` taken by the matcher -> whether the grammar is complete (nothing may follow)."""
        if not matcher.consume_token(token):
            raise RuntimeError(f"constrained decoding: token {token} was not allowed: {matcher.get_error()[:300]}")
        return matcher.is_stopped()


def string_state(text: str) -> int | None:
    """Where a JSON text ends: 0 outside a string, 1 inside one, None right after a backslash
    inside one (the next character is escaped: nothing can close there)."""
    inside = escaped = False
    for ch in text:
        if not inside:
            inside = ch == '"'
        elif escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            inside = False
    return None if escaped else int(inside)
