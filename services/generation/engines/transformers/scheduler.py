"""The scheduler: which requests are in the batch, and what happens to each after a forward.

Both decode loops (``hf_loop.HFLoop``, transformers' forward; ``lean_loop.LeanLoop``, the lean
one) own only the model side (caches, prefill, forward). Everything about requests goes through
the scheduler's public methods: :meth:`admit` takes waiting requests into the batch, :meth:`step`
turns each row's logits into its next token (sampling, penalties, logprobs, detokenising, handing
out deltas), :meth:`retire` drops what finished or left, :meth:`flush` delivers a step's deltas.
The batch itself (``in_flight``) and the counters are its state.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from ...api import Delta
from ...errors import ModelUnavailable
from . import guided, sampling
from .requests import Outbox, Request

log = logging.getLogger(__name__)

COUNTERS = ("requests", "completed", "cancelled", "batches", "largest_batch", "active", "generated_tokens",
            "prefix_cached_tokens")


class Scheduler:
    def __init__(self, tokenizer, eos_ids: set[int], pad_id: int, *, max_batch_size: int, batch_wait_s: float,
                 guides=None):
        self.decode = tokenizer.decode
        self.guides = guides  # guided.Guides: masks the rows of requests with a JSON schema
        self.eos_ids, self.pad_id = eos_ids, pad_id
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self.in_flight: list[Request] = []  # every request of the batch being served (failed together on a crash)
        self._pending: queue.Queue[Request | None] = queue.Queue()
        self._outbox = Outbox()
        self._stats = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()
        self.sample = sampling.sample  # one row's token from its logits (replaceable in tests)

    # -- intake (any thread) ---------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        self.count(requests=1)
        self._pending.put(request)

    def close(self) -> None:
        self._pending.put(None)

    # -- the batch (the decode thread) -----------------------------------------------------------------
    def next_batch(self) -> list[Request] | None:
        """Blocks for the first request, then waits up to ``batch_wait_s`` for company; None: closed."""
        first = self._pending.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            try:
                item = self._pending.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self._pending.put(None)
                break
            batch.append(item)
        self.count(batches=1)
        self.in_flight = list(batch)
        return batch

    def admit(self, room: int) -> list[Request]:
        """Requests waiting right now (no waiting for more), at most ``room``; they join ``in_flight``."""
        taken = []
        while len(taken) < room:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: finish what runs, admit nothing more
                self._pending.put(None)
                break
            taken.append(item)
        self.in_flight = [r for r in self.in_flight if not r.done] + taken
        return taken

    def retire(self, r: Request) -> bool:
        """Whether ``r`` is finished; a request whose consumer left is finished (and counted) here."""
        if r.cancelled.is_set() and not r.done:
            r.done = True
            self.count(cancelled=1)
        return r.done

    def step(self, rows: list[Request], logits) -> list[int]:
        """Each row's next token (``logits`` (rows, vocab)), the rows advanced; guided rows masked
        first, then the plain greedy rows chosen together, the others one by one."""
        guided = [(i, r) for i, r in enumerate(rows) if r.matcher is not None and not r.done]
        if guided:
            self._constrain(logits, guided)
        plain = [i for i, r in enumerate(rows) if sampling.plain_greedy(r.params)] if len(rows) > 1 else []
        chosen: dict[int, int] = {}
        if len(plain) > 1:
            try:
                part = logits if len(plain) == len(rows) else logits[plain]
                chosen = dict(zip(plain, sampling.greedy_rows(part, [rows[i] for i in plain]), strict=True))
            except Exception:
                log.exception("choosing a batch's greedy tokens failed; choosing them one by one")
        return [self._choose(r, logits[i], chosen.get(i)) for i, r in enumerate(rows)]

    def step_one(self, r: Request, logits) -> int:
        """One row's next token from its logits (a prompt just prefilled), the row advanced."""
        if r.matcher is not None:
            self._constrain(logits.unsqueeze(0), [(0, r)])
        return self._choose(r, logits)

    def _constrain(self, logits, rows: list[tuple[int, Request]]) -> None:
        """The guided rows' logits masked to their grammars (guided.Guides.constrain); a row whose
        grammar fails ends its request with the error (``_choose`` then skips it)."""
        items = []
        for i, r in rows:
            if r.json_tail is None:
                r.json_tail = guided.JsonTail()
            items.append((i, r.matcher, r.json_tail.update(r.text), r.params.max_tokens - len(r.tokens),
                          guided.closing_budget(r.params.max_tokens)))
        try:
            failed = self.guides.constrain(logits, items)
        except Exception as exc:  # noqa: BLE001 - the masking pass itself broke: its rows end, the batch goes on
            failed = [(i, exc) for i, _ in rows]
        by_row = dict(rows)
        for i, exc in failed:
            log.error("constrained decoding failed for one request: %s", exc)
            by_row[i].emit(ModelUnavailable(f"generation failed for this request: {exc}"))
            by_row[i].done = True

    def _choose(self, r: Request, logits, token: int | None = None) -> int:
        """Sample (unless ``token`` was chosen already) and advance one row; a failure there ends
        that request alone, the batch goes on."""
        if r.done:
            return self.pad_id
        try:
            if token is None:
                logits = sampling.penalise(logits, r)
                token = self.sample(logits, r.params, r.generator)
                if r.params.logprobs is not None:
                    r.logprobs.append(sampling.logprob(logits, token, r.params.logprobs, self.decode))
            self.advance(r, token)
            return token
        except Exception as exc:
            log.exception("generation failed for one request")
            r.emit(ModelUnavailable(f"generation failed for this request: {type(exc).__name__}"))
            r.done = True
            return self.pad_id

    def advance(self, r: Request, token: int) -> None:
        """``token`` appended to ``r``; its new text (if any) posted, finished at EOS or max_tokens."""
        if r.cancelled.is_set():
            r.done = True
            self.count(cancelled=1)
            return
        finish = None
        if token in self.eos_ids:
            finish = "stop"
        else:
            r.tokens.append(token)
            if r.seen is not None:
                r.seen[token] = True
            self.count(generated_tokens=1)
            if r.matcher is not None and self.guides.advance(r.matcher, token):
                finish = "stop"  # the grammar is complete: nothing may follow (the JSON document is closed)
            elif len(r.tokens) >= r.params.max_tokens:
                finish = "length"
        delta = r.new_text(self.decode, final=finish is not None)
        if delta is None:
            return
        if finish:
            r.done = True
            self.count(completed=1)
        if delta or finish:
            self._outbox.post(r, Delta(delta, finish, len(r.prompt_ids), len(r.tokens), tuple(r.logprobs)))
            r.logprobs = []

    def flush(self) -> None:
        """The deltas of the steps so far, delivered (one wake-up per event loop)."""
        self._outbox.flush()

    def fail_in_flight(self, exc: BaseException) -> None:
        """A broken batch fails its requests, never the decode thread."""
        self._outbox.flush()
        for r in self.in_flight:
            if not r.done:
                r.done = True
                r.emit(ModelUnavailable(f"generation failed: {exc}"))

    def end_batch(self) -> None:
        self.in_flight = []
        self.report(0, 0)

    # -- counters --------------------------------------------------------------------------------------
    def count(self, **changes: int) -> None:
        with self._lock:
            for key, value in changes.items():
                self._stats[key] += value

    def report(self, active: int, decoding: int) -> None:
        """Requests in the batch now (decoding, prefilling or admitted) and rows decoding together."""
        with self._lock:
            self._stats["active"] = active
            self._stats["largest_batch"] = max(self._stats["largest_batch"], decoding)

    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats, queued=self._pending.qsize())
