"""Constrained decoding for the transformers engine: each guided request holds an llguidance
matcher (its schema's grammar, advanced by every token it takes); before a row samples, the
tokens the grammar does not allow next are masked to -inf.

It sits where logits become tokens (the scheduler), so both decode loops, continuous batching,
chunked prefill, the prefix cache and per-row adapters are untouched by it: a mask changes which
token a row picks, nothing about how the row was computed. A schema's grammar is compiled once
(its lexer and parser tables, ~1-2 ms) and each request starts from a copy of that matcher.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ...errors import InvalidGenerationRequest
from ...structured import grammar

CACHED_GRAMMARS = 256


class Guides:
    def __init__(self, tokenizer, vocab_size: int):
        self._hf_tokenizer, self.vocab_size = tokenizer, vocab_size
        self._tokenizer = None
        self._compiled: OrderedDict[str, object] = OrderedDict()  # canonical schema -> a fresh matcher
        self._lock = threading.Lock()

    def matcher(self, schema: str):
        """A matcher at the start of ``schema``'s grammar (compiled once per schema, then copied).
        Runs off the event loop: the first call builds the tokenizer's token trie (~1 s here)."""
        import llguidance

        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self.vocab_size)
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

    def constrain(self, logits, matcher) -> None:
        """``logits`` (one row, a view into the step's logits) masked in place to what ``matcher``
        allows (entries past the tokenizer's vocabulary, padding of the embedding, to -inf too)."""
        import llguidance.torch as lt

        mask = lt.allocate_token_bitmask(1, self.vocab_size)
        lt.fill_next_token_bitmask(matcher, mask, 0)
        if matcher.is_error():
            raise RuntimeError(f"constrained decoding failed: {matcher.get_error()[:300]}")
        lt.apply_token_bitmask_inplace(logits.unsqueeze(0) if logits.dim() == 1 else logits,
                                       mask.to(logits.device, non_blocking=True))

    @staticmethod
    def advance(matcher, token: int) -> bool:
        """``token`` taken by the matcher -> whether the grammar is complete (nothing may follow)."""
        if not matcher.consume_token(token):
            raise RuntimeError(f"constrained decoding: token {token} was not allowed: {matcher.get_error()[:300]}")
        return matcher.is_stopped()
