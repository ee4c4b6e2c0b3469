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
the schema needs more than the tokens left (then it ends with ``length``, like any answer). Where
the grammar allows no closing token yet (a string with a format or pattern: an e-mail address needs
"@" and a domain before its quote; an array short of minItems), the answer follows a short path to a
complete document that the matcher itself finds (:meth:`Guides._closing_path`). And a
number is cut at MAX_NUMBER_CHARS characters (a float64 holds no more): a small model asked for a
score between 0 and 1 can otherwise write "0.5666666..." until max_tokens.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from llm_twin.config import in_own_thread

from ...errors import InvalidGenerationRequest
from ...structured import grammar

CACHED_GRAMMARS = 256
CLOSING_CHARS = frozenset("}] ")
# What a closing path is made of (single-character tokens), in the order it tries them. Inside a
# string: its end first, then separators, a letter and a digit (and the letters date-times end
# with), then every other letter and digit (a pattern's literal: ".txt"). Outside: what closes,
# then what a value or an item needs next.
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PATH_CHARS = {1: '"@.:/-_ a0ZT' + "".join(c for c in _ALNUM if c not in "a0ZT") + "}],",
              0: '}]",: 0tfn-'}
PATH_OPENERS = frozenset('"}]')  # used as often as the document needs; inside strings, others at most 4 times
MAX_PATH_NODES = 4000  # tokens tried per search (each ~1 us in the matcher); none found: the grammar's mask stays
PATH_RETRY = 6  # tokens between two searches for a closing path
PATH_HORIZON = 4  # closing budgets before max_tokens from which on a path's length is checked against what is left
NUMBER_CHARS = frozenset("0123456789.eE+-")
MAX_NUMBER_CHARS = 18


def closing_budget(max_tokens: int) -> int:
    """The last tokens of a guided answer in which it closes what is open: a quarter, 8 to 48."""
    return min(48, max(8, max_tokens // 4))


class Guides:
    def __init__(self, tokenizer, vocab_size: int):
        self._hf_tokenizer, self.vocab_size = tokenizer, vocab_size
        self._tokenizer = None
        self._compiled: OrderedDict[str, object] = OrderedDict()  # canonical schema -> a fresh matcher
        self._lock = threading.Lock()
        # bool per vocabulary entry: the token only closes (see closing_budget), outside a string / inside
        # one; the token continues a number
        self._closers: tuple | None = None
        self._number_tokens = None
        single = {c: ids[0] for c in set("".join(PATH_CHARS.values()))
                  if len(ids := tokenizer.encode(c, add_special_tokens=False)) == 1 and ids[0] < vocab_size}
        self._path_tokens = {state: [(c, single[c]) for c in chars if c in single]
                             for state, chars in PATH_CHARS.items()}
        self._eos_ids = {i for i in (tokenizer.eos_token_id,) if i is not None}

    def matcher(self, schema: str):
        """A matcher at the start of ``schema``'s grammar (compiled once per schema, then copied).
        Runs off the event loop: the first call builds the tokenizer's token trie (~1 s here)."""
        import llguidance

        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self.vocab_size)
                # Vocabulary-sized torch ops run in parallel: in a thread of their own (in_own_thread),
                # or the caller (the replica's main thread, an event-loop worker) keeps OpenMP helpers
                # and the decode loop ran at half speed from then on (26 against 44 tokens/s served).
                self._closers, self._number_tokens = in_own_thread(self._closing_tokens)
            prototype = self._compiled.get(schema)
            if prototype is None:
                prototype = llguidance.LLMatcher(self._tokenizer, grammar(schema))
                if prototype.is_error():
                    raise InvalidGenerationRequest(f"json_schema cannot be used for constrained decoding: "
                                                   f"{_reason(prototype)}")
                stuck = self._first_mask_error(prototype)  # e.g. a $ref to itself: no finite document matches
                if stuck:
                    raise InvalidGenerationRequest("json_schema matches no finite JSON document, so no answer "
                                                   f"can be generated: {_first_line(stuck)}")
                self._compiled[schema] = prototype
                while len(self._compiled) > CACHED_GRAMMARS:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(schema)
            return prototype.deep_copy()

    def _first_mask_error(self, prototype) -> str:
        """'' when some token may begin an answer; else the matcher's error at its first mask."""
        import llguidance.torch as lt

        probe = prototype.deep_copy()
        lt.fill_next_token_bitmask(probe, lt.allocate_token_bitmask(1, self.vocab_size), 0)
        return (probe.get_error() or "no token may start the answer") if probe.is_error() else ""

    def warm(self) -> None:
        """Builds what the first guided request would wait ~1.5 s for (the token trie, the lexer's
        tables for strings and numbers) by running a small schema over a few tokens."""
        import llguidance.torch as lt

        matcher = self.matcher('{"type":"object","properties":{"a":{"type":"number"},"b":{"type":"string"}}}')
        mask = lt.allocate_token_bitmask(1, self.vocab_size)
        for token in self._hf_tokenizer.encode('{"a": 0.5, "b": "x y"}', add_special_tokens=False):
            lt.fill_next_token_bitmask(matcher, mask, 0)
            if not matcher.consume_token(token):
                break

    def _closing_tokens(self) -> tuple:
        """((outside a string: tokens of closing braces and brackets only, and the end of sequence;
        inside one: a quote that ends it, optionally followed by closing braces and brackets),
        tokens that start with a number's character)."""
        import torch

        outside, inside, numbers = [], [], []
        pieces = self._hf_tokenizer.batch_decode([[i] for i in range(len(self._hf_tokenizer))])
        for i, piece in enumerate(pieces[:self.vocab_size]):
            if piece.strip() and set(piece) <= CLOSING_CHARS:
                outside.append(i)
            elif piece.startswith('"') and set(piece[1:]) <= CLOSING_CHARS:
                inside.append(i)
            if piece[:1] in NUMBER_CHARS:
                numbers.append(i)
        outside += [i for i in self._eos_ids if i < self.vocab_size]

        def mask(indices: list[int]):
            out = torch.zeros(self.vocab_size, dtype=torch.bool)
            out[torch.tensor(indices, dtype=torch.long)] = True
            return out

        return (mask(outside), mask(inside)), mask(numbers)

    def _closing_path(self, matcher, inside: bool, limit: int) -> list[int]:
        """Tokens that take ``matcher`` (``inside`` a string or not) to a complete document, at most
        ``limit`` of them, or [] when none was found. Depth first over single characters in
        PATH_CHARS' order, so a string with a format closes by the shortest means the order gives
        ("x" -> "x@a.aa" for an e-mail); no token three times running and, inside strings, no
        character but a quote more than 4 times, so that a repeatable one ("a.a.a...") cannot take
        the whole search."""
        probe, path, used, tried = matcher.deep_copy(), [], {}, 0

        def search(inside: bool) -> bool:
            nonlocal tried
            if probe.is_accepting():
                return True
            forced = probe.compute_ff_tokens()  # what the grammar allows alone (', "b": '): taken whole
            if forced:
                if len(path) + len(forced) > limit or not probe.consume_tokens(forced):
                    return False
                path.extend(forced)
                if search(inside != (self._hf_tokenizer.decode(forced).count('"') % 2 == 1)):
                    return True
                probe.rollback(len(forced))
                del path[-len(forced):]
                return False
            if len(path) >= limit:
                return False
            for char, token in self._path_tokens[int(inside)]:
                if tried >= MAX_PATH_NODES:
                    return False
                if path[-2:] == [token, token] or (inside and char not in PATH_OPENERS and used.get(char, 0) >= 4):
                    continue
                tried += 1
                if probe.validate_tokens([token]) != 1:
                    continue
                probe.consume_token(token)
                path.append(token)
                used[char] = used.get(char, 0) + 1
                if search(inside != (char == '"')):
                    return True
                probe.rollback(1)
                path.pop()
                used[char] -= 1
            return False

        return list(path) if search(inside) else []

    def constrain(self, logits, rows: list[tuple]) -> list[tuple[int, Exception]]:
        """Rows of ``logits`` (rows, vocab) masked in place, each to what its matcher allows (entries
        past the tokenizer's vocabulary, padding of the embedding, to -inf too). ``rows``: (row,
        matcher, tail: JsonTail of the answer so far, left: the tokens it may still take, closing_at:
        its closing budget, :func:`closing_budget`). One bitmask and one masking pass for all of them. -> the rows whose
        matcher failed, with the error (those rows are left as they were)."""
        import llguidance.torch as lt
        import torch

        mask = lt.allocate_token_bitmask(len(rows), self.vocab_size)
        failed, kept = [], []
        for j, (row, matcher, *_) in enumerate(rows):
            lt.fill_next_token_bitmask(matcher, mask, j)
            if matcher.is_error():
                failed.append((row, RuntimeError(f"constrained decoding failed: {_reason(matcher)}")))
            else:
                kept.append(j)
        if not kept:
            return failed
        index = torch.tensor([rows[j][0] for j in kept], device=logits.device)
        part = logits[index]
        lt.apply_token_bitmask_inplace(part, mask[kept].to(logits.device, non_blocking=True))
        for k, j in enumerate(kept):
            _, matcher, tail, left, closing_at = rows[j]
            state, row = tail.state(), part[k, :self.vocab_size]
            if tail.number_chars >= MAX_NUMBER_CHARS and state == 0:
                _narrow(row, ~self._number_tokens.to(logits.device))
            if state is None:
                continue
            # A search costs up to ~10 ms when it finds no path: once every PATH_RETRY tokens at most.
            due = not tail.path and left <= tail.searched - PATH_RETRY
            if left <= closing_at:
                if not tail.path and not _narrow(row, self._closers[state].to(logits.device)) and due:
                    # nothing closes here yet: a path to the end
                    tail.path, tail.searched = self._closing_path(matcher, state == 1, left), left
            elif due and left <= PATH_HORIZON * closing_at:
                # Before the closing tokens: does what the schema still needs (seven required
                # fields after a long first one) already take about all the tokens left?
                path, tail.searched = self._closing_path(matcher, state == 1, left), left
                if path and len(path) + PATH_RETRY >= left:
                    tail.path = path
            if tail.path and bool(torch.isfinite(row[tail.path[0]])):
                keep = torch.zeros(self.vocab_size, dtype=torch.bool, device=logits.device)
                keep[tail.path.pop(0)] = True
                _narrow(row, keep)
            else:
                tail.path = []
        logits[index] = part
        return failed

    @staticmethod
    def advance(matcher, token: int) -> bool:
        """``token`` taken by the matcher -> whether the grammar is complete (nothing may follow)."""
        if not matcher.consume_token(token):
            raise RuntimeError(f"constrained decoding: token {token} was not allowed: {_reason(matcher)}")
        return matcher.is_stopped()


def _reason(matcher) -> str:
    return _first_line(matcher.get_error())


def _first_line(error: str) -> str:
    """A matcher's error is a reason line followed by a dump of the parser's state: the reason."""
    text = error.strip()
    return (text.splitlines()[0] if text else "unknown")[:300]


def _narrow(logits, keep) -> bool:
    """``logits`` (a row, already masked) narrowed in place to ``keep`` where that leaves a token
    (-> True); else left as it is (-> False)."""
    import torch

    narrowed = logits.masked_fill(~keep, float("-inf"))
    if bool(torch.isfinite(narrowed).any()):
        logits.copy_(narrowed)
        return True
    return False


class JsonTail:
    """Where a JSON answer stands, read incrementally as its text grows: inside a string or not
    (after a backslash: neither, the next character is escaped), and how long the number it ends
    with is."""

    def __init__(self):
        self.read = 0
        self.inside = self.escaped = False
        self.number_chars = 0
        self.path: list[int] = []  # the rest of a closing path being followed (Guides.constrain)
        self.searched = 1 << 30  # tokens left when a closing path was last searched for

    def update(self, text: str) -> JsonTail:
        for ch in text[self.read:]:
            if not self.inside:
                self.inside = ch == '"'
                self.number_chars = self.number_chars + 1 if ch in NUMBER_CHARS else 0
            elif self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif ch == '"':
                self.inside = False
        self.read = len(text)
        return self

    def state(self) -> int | None:
        """0 outside a string, 1 inside one, None right after a backslash inside one."""
        return None if self.escaped else int(self.inside)
