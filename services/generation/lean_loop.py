"""Continuous batching over the lean forward, with chunked prefill and prefix caching.

Each turn of the loop is one forward: a decode step for every running request and, in the same
matrix multiplications, at most one chunk (``prefill_chunk`` tokens) of the prompt being admitted,
so a long RAG prompt arriving adds one chunk's compute to the running streams' next token rather
than its whole prefill. A finished prompt
joins the decode batch at once; a finished request leaves it at once. A prompt's leading blocks
found in the prefix cache are copied instead of computed.
"""

from __future__ import annotations

import logging

import torch

from .errors import InvalidGenerationRequest
from .lean_llama import LeanLlama
from .prefix_cache import PrefixCache

log = logging.getLogger(__name__)


class LeanLoop:
    def __init__(self, backend, engine: LeanLlama, prefill_chunk: int, prefix_cache_tokens: int):
        self.backend = backend  # its _step (sample + hand out), _take_pending, stats
        self.engine = engine
        self.chunk = prefill_chunk if prefill_chunk > 0 else engine.max_len
        self.prefix = PrefixCache(prefix_cache_tokens)
        # A decode step of a row or two is bound by reading the weights, not by arithmetic, and the
        # thread streaming its tokens out needs a core between steps: on 2 cores one torch thread
        # decoded a single stream at 38 tokens/s where two (each step faster alone) gave 35, the
        # streaming thread preempting them mid-step. Larger steps and prompt chunks use them all.
        self.threads = torch.get_num_threads()
        self.light_threads = max(1, self.threads - 1)

    def serve(self, new: list) -> None:
        b, engine = self.backend, self.engine
        rows: list = []  # the decode batch: row i of the cache is rows[i]
        next_ids: list[int] = []
        lengths: list[int] = []  # tokens cached per row
        waiting = list(new)
        b._in_flight = admitted = list(new)
        filling, filled = None, 0  # the prompt being prefilled (in cache row len(rows)), tokens done
        with torch.inference_mode():
            while True:
                b._outbox.flush()  # the last step's deltas, before the next step's work
                waiting = [r for r in waiting if not self._left(r)]
                if filling is not None and self._left(filling):
                    filling = None
                if filling is None and waiting and len(rows) < b.max_batch_size:
                    filling = waiting.pop(0)
                    filled = self._begin(filling, len(rows))
                    if filled is None:
                        filling = None
                        continue
                self._report(len(rows), filling, waiting)
                if not rows and filling is None:
                    if waiting:
                        continue
                    return
                chunk = None
                if filling is not None:
                    ids = filling.prompt_ids
                    piece = ids[filled:filled + self.chunk]
                    chunk = (len(rows), torch.tensor(piece), filled, filling.adapter)
                self._threads(self.light_threads if chunk is None and len(rows) <= 2 else self.threads)
                logits, chunk_logits = engine.step(torch.tensor(next_ids) if rows else None,
                                                   torch.tensor(lengths) if rows else None,
                                                   [r.adapter for r in rows], chunk)
                for i, r in enumerate(rows):
                    next_ids[i] = b._step(r, logits[i])
                    lengths[i] += 1
                before = len(rows)  # the filling prompt's cache row
                if chunk is not None:
                    filled += len(piece)
                    if filled == len(ids):  # prefilled: it joins the decode batch in the row it has
                        self.prefix.store(filling.adapter, ids, lambda s, e, row=before: engine.read(row, s, e))
                        token = b._step(filling, chunk_logits[0])
                        if not filling.done:
                            rows.append(filling)
                            next_ids.append(token)
                            lengths.append(len(ids))
                        filling = None
                self._drop_finished(rows, next_ids, lengths)
                if filling is not None and filled and len(rows) < before:
                    engine.move_row(before, len(rows), filled)
                room = b.max_batch_size - len(rows) - (filling is not None) - len(waiting)
                taken = b._take_pending(max(0, room))
                waiting.extend(taken)
                admitted.extend(taken)

    @staticmethod
    def _threads(n: int) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def _left(self, r) -> bool:
        if r.cancelled.is_set() and not r.done:
            r.done = True
            self.backend._bump(cancelled=1)
        return r.done

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
            self.backend._bump(prefix_cached_tokens=filled)
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

    def _report(self, decoding: int, filling, waiting: list) -> None:
        b = self.backend
        with b._stats_lock:
            b._stats["active"] = decoding + (filling is not None) + len(waiting)
            b._stats["largest_batch"] = max(b._stats["largest_batch"], decoding)
