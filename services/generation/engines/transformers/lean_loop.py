"""Continuous batching over the lean forward, with chunked prefill and prefix caching.

Each turn of the loop is one forward: a decode step for every running request and, in the same
matrix multiplications, ``prefill_chunk`` tokens of the prompts being admitted (one long prompt's
next chunk, or several short prompts whole), so a long RAG prompt arriving adds one chunk's
compute to the running streams' next token rather than its whole prefill. A finished prompt
joins the decode batch at once; a finished request leaves it at once. A prompt's leading blocks
found in the prefix cache are copied instead of computed. Requests are the scheduler's business
(scheduler.py): this loop owns the cache rows, the prompt chunks and the prefix cache.
"""

from __future__ import annotations

import logging

import torch

from ...errors import InvalidGenerationRequest
from .lean_llama import LeanLlama
from .prefix_cache import PrefixCache
from .scheduler import Scheduler

log = logging.getLogger(__name__)


class LeanLoop:
    def __init__(self, scheduler: Scheduler, engine: LeanLlama, prefill_chunk: int, prefix_cache_tokens: int):
        self.scheduler = scheduler
        self.engine = engine
        self.chunk = prefill_chunk if prefill_chunk > 0 else engine.max_len
        self.prefix = PrefixCache(prefix_cache_tokens)

    def serve(self, new: list) -> None:
        s, engine = self.scheduler, self.engine
        rows: list = []  # the decode batch: row i of the cache is rows[i]
        next_ids: list[int] = []
        lengths: list[int] = []  # tokens cached per row
        # Prompts being prefilled, oldest first, in the cache rows after the decode batch:
        # [request, tokens done, cache row]. The step's chunk budget goes to them in that order,
        # so a prompt completes no later than those behind it and joins the batch in the next row.
        filling: list[list] = []
        waiting = list(new)
        with torch.inference_mode():
            while True:
                s.flush()  # the last step's deltas, before the next step's work
                waiting = [r for r in waiting if not s.retire(r)]
                filling = self._compact(len(rows), [f for f in filling if not s.retire(f[0])])
                chunks = self._plan(len(rows), filling, waiting)
                s.report(len(rows) + len(filling) + len(waiting), len(rows))
                if not rows and not chunks:
                    if waiting:
                        continue
                    return
                logits, chunk_logits = engine.step(torch.tensor(next_ids) if rows else None,
                                                   torch.tensor(lengths) if rows else None,
                                                   [r.adapter for r in rows], chunks)
                if rows:
                    next_ids = s.step(rows, logits)
                    lengths = [n + 1 for n in lengths]
                for f, (row, piece, _, _), last in zip(filling[:len(chunks)], chunks, chunk_logits, strict=True):
                    r = f[0]
                    f[1] += len(piece)
                    if f[1] < len(r.prompt_ids):
                        break  # only the last chunk can leave its prompt unfinished
                    # Prefilled: it joins the decode batch in the row it has (the next one), even when
                    # its first token ends it: _drop_finished then frees the row like any other.
                    self.prefix.store(r.adapter, r.prompt_ids, lambda s, e, row=row: engine.read(row, s, e))
                    filling.pop(0)
                    rows.append(r)
                    next_ids.append(s.step_one(r, last[0]))
                    lengths.append(len(r.prompt_ids))
                self._drop_finished(rows, next_ids, lengths)
                filling = self._compact(len(rows), filling)
                room = s.max_batch_size - len(rows) - len(filling) - len(waiting)
                waiting.extend(s.admit(max(0, room)))

    def _plan(self, decoding: int, filling: list, waiting: list) -> list[tuple]:
        """This step's prompt chunks, ``prefill_chunk`` tokens in all: the oldest prompts' next
        tokens first, then waiting requests admitted while rows and tokens are left (several short
        prompts share one step instead of a step each)."""
        chunks, budget = [], self.chunk
        while budget > 0:
            if len(chunks) == len(filling):
                if not waiting or decoding + len(filling) >= self.scheduler.max_batch_size:
                    break
                r = self._next_waiting(waiting, filling)
                if r is None:
                    break
                row = decoding + len(filling)
                done = self._begin(r, row)
                if done is not None:
                    filling.append([r, done, row])
                continue
            r, done, row = filling[len(chunks)]
            piece = r.prompt_ids[done:done + budget]
            chunks.append((row, torch.tensor(piece), done, r.adapter))
            budget -= len(piece)
        return chunks

    def _next_waiting(self, waiting: list, filling: list):
        """The oldest waiting request to begin now. One whose prompt is being prefilled right now
        (the other choices of an ``n`` > 1 request, or the same prompt sent twice) waits until that
        prefill ends: it then copies the prompt from the prefix cache instead of computing it again."""
        if not self.prefix.capacity:
            return waiting.pop(0) if waiting else None
        for i, r in enumerate(waiting):
            if not any(f[0].adapter == r.adapter and f[0].prompt_ids == r.prompt_ids for f in filling):
                return waiting.pop(i)
        return None

    def _compact(self, decoding: int, filling: list) -> list:
        """Prompts being prefilled move down to the rows right after the decode batch (rows free up
        when requests finish or leave); in order, so a move never lands on a row still in use."""
        for i, f in enumerate(filling):
            if f[2] != decoding + i:
                self.engine.move_row(f[2], decoding + i, f[1])
                f[2] = decoding + i
        return filling

    def _begin(self, r, row: int) -> int | None:
        """Room for the request and its prompt's cached prefix copied in -> tokens already filled."""
        ids = r.prompt_ids
        try:
            self.engine.reserve(len(ids) + r.params.max_tokens)
        except ValueError:
            r.done = True
            r.emit(InvalidGenerationRequest(
                f"the prompt ({len(ids)} tokens) and max_tokens ({r.params.max_tokens}) exceed the model's context "
                f"of {self.engine.max_len} tokens: shorten the conversation or lower max_tokens"))
            return None
        filled = 0
        for block in self.prefix.lookup(r.adapter, ids, len(ids) - 1):  # the last token is always computed
            self.engine.write(row, filled, block)
            filled += block.shape[-2]
        if filled:
            self.scheduler.count(prefix_cached_tokens=filled)
        return filled

    def _drop_finished(self, rows: list, next_ids: list, lengths: list) -> None:
        """Finished rows leave; the last row moves into each gap, so the batch stays rows 0..B-1."""
        for i in range(len(rows) - 1, -1, -1):
            if not rows[i].done:
                continue
            last = len(rows) - 1
            if i != last:
                self.engine.move_row(last, i, lengths[last])
                rows[i], next_ids[i], lengths[i] = rows[last], next_ids[last], lengths[last]
            rows.pop()
            next_ids.pop()
            lengths.pop()
