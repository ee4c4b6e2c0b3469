"""transformers generation backend: one decode loop that batches concurrent requests.

Requests queue up; a worker thread takes up to ``max_batch_size`` of them (waiting at most
``batch_wait_s`` for company), left-pads their prompts, and decodes them together step by step
with one KV cache, handing each request its text as it comes. The batch is continuous: a request
arriving while others decode is prefilled and joins at the next step (its cache left-padded to
the batch's length), and a finished one leaves at once. A request whose consumer goes away is
dropped at the next step, so no generation runs for nobody. Running the loop ourselves (rather than ``model.generate``) is what
gives per-request streaming, sampling settings and cancellation inside one batch.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from llm_twin import prompts
from llm_twin.config import in_own_thread

from . import lean_llama, sampling
from . import quantization as quantization_
from .backend import Delta, SamplingParams
from .errors import ModelUnavailable

log = logging.getLogger(__name__)


@dataclass
class _Request:
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
    read: int = 0  # tokens[:read] are in text; tokens[base:read] decode to the text's tail
    base: int = 0

    def emit(self, delta: Delta | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, delta)
        except RuntimeError:  # the consumer's event loop has closed: nobody reads this request
            self.cancelled.set()


class _Outbox:
    """A decode step's deltas, handed to each event loop in one call: one wake-up of the serving
    thread per step rather than one per request (with 8 streams those wake-ups, each taking a
    core from the decode threads, cost more than the sampling)."""

    def __init__(self):
        self._items: dict = {}

    def post(self, r: _Request, delta: Delta) -> None:
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


def _pick_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ModelUnavailable(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16") from None


class TransformersBackend:
    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "auto", max_batch_size: int = 8,
                 batch_wait_s: float = 0.01, model_id: str | None = None, quantization: str = "none",
                 lean: bool = True, prefill_chunk: int = 64, prefix_cache_tokens: int = 4096,
                 int8_kernel: str = "auto"):
        quantization = quantization_.resolve(quantization, device)
        int8_op = quantization_.int8_op(quantization, int8_kernel, device)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        def load():  # in a thread of its own (llm_twin.config.in_own_thread: why)
            loaded = AutoModelForCausalLM.from_pretrained(
                model, dtype=quantization_.load_dtype(quantization, _pick_dtype(dtype, device)))
            loaded.to(device).eval()
            return loaded, quantization_.quantize(loaded, quantization, device, int8_op)

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.control_tokens = prompts.control_tokens(self.tokenizer)
            self.model, self.quantized_modules = in_own_thread(load)
        except OSError as exc:
            raise ModelUnavailable(f"cannot load model {model!r}: {exc}. Set TWIN_GENERATION_MODEL to a "
                                   "local model folder (nothing is downloaded at run time)") from exc
        self.quantization, self.int8_op = quantization, int8_op
        if not self.tokenizer.chat_template:
            raise ModelUnavailable(f"model {model!r} has no chat template; use an instruct/chat model")
        self.device = device
        self.model_id = model_id or os.path.basename(str(model).rstrip("/"))
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in [*eos, self.tokenizer.eos_token_id] if i is not None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._torch = torch
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, then goes away).
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self._pending: queue.Queue[_Request | None] = queue.Queue()
        self._stats = {"requests": 0, "completed": 0, "cancelled": 0, "batches": 0, "largest_batch": 0,
                       "active": 0, "generated_tokens": 0, "prefix_cached_tokens": 0}
        self._stats_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._in_flight: list[_Request] = []
        self._outbox = _Outbox()
        self.lean = in_own_thread(self._lean_loop, lean, prefill_chunk, prefix_cache_tokens)
        self._worker = threading.Thread(target=self._run, name="generation-batcher", daemon=True)
        self._worker.start()

    def _lean_loop(self, wanted: bool, prefill_chunk: int, prefix_cache_tokens: int):
        """The lean forward where it computes what this model computes (a Llama on a CPU)."""
        from .lean_loop import LeanLoop

        why_not = "TWIN_GENERATION_LEAN=false" if not wanted else (
            "a GPU (transformers' forward uses its kernels)" if self.device != "cpu" else lean_llama.supports(self.model))
        if why_not:
            log.info("generation decodes with transformers' forward: %s", why_not)
            return None
        engine = lean_llama.LeanLlama(self.model, int8=self.quantization == "int8", rows=self.max_batch_size,
                                      int8_op=self.int8_op)
        return LeanLoop(self, engine, prefill_chunk, prefix_cache_tokens)

    # -- the interface -------------------------------------------------------------------------
    def render(self, messages: Sequence[dict]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def stream(self, prompt: str, params: SamplingParams, adapter: str | None = None) -> AsyncIterator[Delta]:
        if adapter is not None and adapter not in self.adapters():
            raise ModelUnavailable(f"adapter {adapter!r} is not loaded")
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        request = _Request(ids, params, asyncio.get_running_loop(), asyncio.Queue(), adapter=adapter)
        # Everything that can fail for one request's own input fails here, before it joins a batch.
        request.generator = sampling.seeded_generator(params.seed, self.device)
        self._bump(requests=1)
        self._pending.put(request)
        try:
            while True:
                item = await request.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason:
                    return
        finally:
            # Reached on normal end too; only a request still running counts as cancelled.
            if not request.done:
                request.cancelled.set()

    # -- LoRA adapters: several twins on one base model ---------------------------------------
    def adapters(self) -> set[str]:
        return set(getattr(self.model, "peft_config", {}) or {})

    def load_adapter(self, name: str, path: str) -> None:
        """Adds a twin's adapter; requests then name it. Requests for different adapters (and
        the base) still decode in one batch: PEFT applies each row's own adapter."""
        in_own_thread(self._load_adapter, name, path)

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        with self._model_lock:
            if name in self.adapters():
                return
            wraps = quantization_.adapter_targets(path) & self.quantized_modules
            if wraps:
                raise ModelUnavailable(
                    f"adapter {name!r} wraps {', '.join(sorted(wraps))}, which int8 serving quantizes: serve with "
                    "TWIN_GENERATION_QUANTIZATION=none or bf16, or train with LoRA target modules among "
                    f"{', '.join(quantization_.INT8_KEEP)}")
            problem = self.lean and lean_llama.adapter_problem(path)
            if problem:
                raise ModelUnavailable(f"adapter {name!r} has {problem}, which the lean decode loop does not apply: "
                                       "serve it with TWIN_GENERATION_LEAN=false")
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            self.model.eval()
            if self.lean is not None:
                self.lean.engine.add_adapter(name, self.model)
                self.lean.prefix.drop(name)

    def unload_adapter(self, name: str) -> None:
        with self._model_lock:
            if name in self.adapters() and len(self.adapters()) > 1:
                self.model.delete_adapter(name)
                if self.lean is not None:
                    self.lean.engine.remove_adapter(name)
                    self.lean.prefix.drop(name)

    def _forward(self, batch: list[_Request], **inputs):
        if self.adapters():
            inputs["adapter_names"] = [r.adapter or "__base__" for r in batch]
        with self._model_lock:
            return self.model(use_cache=True, **inputs).logits[:, -1, :]

    def stats(self) -> dict:
        with self._stats_lock:
            return dict(self._stats, queued=self._pending.qsize())

    def close(self) -> None:
        self._pending.put(None)
        self._worker.join(timeout=30)

    # -- the decode loop ---------------------------------------------------------------------------
    def _bump(self, **changes: int) -> None:
        with self._stats_lock:
            for key, value in changes.items():
                self._stats[key] += value

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
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
            self._bump(batches=1)
            try:
                (self.lean.serve if self.lean is not None else self._serve)(batch)
                self._outbox.flush()
            except Exception as exc:  # a broken batch fails its requests, never the worker
                log.exception("generation batch failed")
                self._outbox.flush()
                for r in self._in_flight:
                    if not r.done:
                        r.done = True
                        r.emit(ModelUnavailable(f"generation failed: {exc}"))
            finally:
                self._in_flight = []
                with self._stats_lock:
                    self._stats["active"] = 0

    def _take_pending(self, room: int) -> list[_Request]:
        """Requests waiting right now (no waiting for more), at most ``room``."""
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
        return taken

    def _serve(self, new: list[_Request]) -> None:
        """Continuous batching: decode everything active one step at a time; requests that arrive
        meanwhile are prefilled and join the batch at the next step, finished ones leave it."""
        torch = self._torch
        active: list[_Request] = []
        self._in_flight = active
        cache = mask = positions = logits = None
        with torch.inference_mode():
            while True:
                self._outbox.flush()
                gone = [r for r in new if r.cancelled.is_set()]
                if gone:  # left before their first step
                    self._bump(cancelled=len(gone))
                    new = [r for r in new if not r.cancelled.is_set()]
                if new:
                    c, m, p, lg = self._prefill(new)
                    if active:
                        cache, mask = self._merge(cache, mask, c, m)
                        positions, logits = torch.cat([positions, p]), torch.cat([logits, lg])
                    else:
                        cache, mask, positions, logits = c, m, p, lg
                    active.extend(new)
                    with self._stats_lock:
                        self._stats["active"] = len(active)
                        self._stats["largest_batch"] = max(self._stats["largest_batch"], len(active))
                if not active:
                    return
                next_ids = self._step_rows(active, logits)
                keep = [row for row, r in enumerate(active) if not r.done]
                if len(keep) < len(active):
                    index = torch.tensor(keep, dtype=torch.long, device=self.device)
                    active[:] = [active[row] for row in keep]
                    next_ids = [next_ids[row] for row in keep]
                    with self._stats_lock:
                        self._stats["active"] = len(active)
                    if not active:
                        cache = None
                        new = self._take_pending(self.max_batch_size)
                        continue
                    cache.batch_select_indices(index)
                    mask, positions = mask[index], positions[index]
                step_ids = torch.tensor(next_ids, device=self.device).unsqueeze(1)
                mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
                positions = positions + 1
                logits = self._forward(active, input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                       **{self._cache_arg: cache})
                new = self._take_pending(self.max_batch_size - len(active))

    def _prefill(self, batch: list[_Request]):
        """Left-padded prompts through the model: -> (cache, mask, last positions, next-token logits)."""
        torch = self._torch
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):  # left padding: every prompt ends at the last column
            ids[row, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[row, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(batch, input_ids=ids, attention_mask=mask, position_ids=positions,
                               **{self._cache_arg: cache})
        return cache, mask, positions[:, -1:], logits

    def _merge(self, cache, mask, new_cache, new_mask):
        """Two batches' caches into one: the shorter is left-padded (masked out) to the longer."""
        torch = self._torch
        width = max(mask.shape[1], new_mask.shape[1])

        def pad(t, n):
            return t if n == 0 else torch.cat([t.new_zeros(*t.shape[:2], n, *t.shape[3:]), t], dim=2)

        grow_old, grow_new = width - mask.shape[1], width - new_mask.shape[1]
        for old, fresh in zip(cache.layers, new_cache.layers, strict=True):
            old.keys = torch.cat([pad(old.keys, grow_old), pad(fresh.keys, grow_new)])
            old.values = torch.cat([pad(old.values, grow_old), pad(fresh.values, grow_new)])
        mask = torch.cat([torch.nn.functional.pad(mask, (grow_old, 0)),
                          torch.nn.functional.pad(new_mask, (grow_new, 0))])
        return cache, mask

    def _step_rows(self, rows: list[_Request], logits) -> list[int]:
        """Each row's next token (``logits`` (rows, vocab)); the plain greedy rows are chosen
        together, the others one by one."""
        plain = [i for i, r in enumerate(rows) if sampling.plain_greedy(r.params)] if len(rows) > 1 else []
        chosen: dict[int, int] = {}
        if len(plain) > 1:
            try:
                part = logits if len(plain) == len(rows) else logits[plain]
                chosen = dict(zip(plain, sampling.greedy_rows(part, [rows[i] for i in plain]), strict=True))
            except Exception:
                log.exception("choosing a batch's greedy tokens failed; choosing them one by one")
        return [self._step(r, logits[i], chosen.get(i)) for i, r in enumerate(rows)]

    def _step(self, r: _Request, logits, token: int | None = None) -> int:
        """Sample (unless ``token`` was chosen already) and advance one row; a failure there ends
        that request alone, the batch goes on."""
        try:
            if token is None:
                logits = sampling.penalise(logits, r)
                token = self._sample(logits, r.params, r.generator)
                if r.params.logprobs is not None:
                    r.logprobs.append(sampling.logprob(logits, token, r.params.logprobs, self.tokenizer.decode))
            self._advance(r, token)
            return token
        except Exception as exc:
            log.exception("generation failed for one request")
            r.emit(ModelUnavailable(f"generation failed for this request: {type(exc).__name__}"))
            r.done = True
            return self.pad_id

    def _advance(self, r: _Request, token: int) -> None:
        if r.cancelled.is_set():
            r.done = True
            self._bump(cancelled=1)
            return
        finish = None
        if token in self.eos_ids:
            finish = "stop"
        else:
            r.tokens.append(token)
            if r.seen is not None:
                r.seen[token] = True
            self._bump(generated_tokens=1)
            if len(r.tokens) >= r.params.max_tokens:
                finish = "length"
        delta = self._new_text(r, final=finish is not None)
        if delta is None:
            return
        if finish:
            r.done = True
            self._bump(completed=1)
        if delta or finish:
            self._outbox.post(r, Delta(delta, finish, len(r.prompt_ids), len(r.tokens), tuple(r.logprobs)))
            r.logprobs = []

    def _new_text(self, r: _Request, final: bool) -> str | None:
        """The text the new tokens add, or None while they end inside a multi-byte character (it
        decodes to U+FFFD until its last token; held back unless the answer ends there). Decodes a
        window from the previous delta's tokens on, not the whole answer at every step: the window
        starts before the new tokens, so a tokenizer that drops a word's leading space at the start
        of a decode still spaces them right."""
        decode = self.tokenizer.decode
        before = decode(r.tokens[r.base:r.read], skip_special_tokens=True)
        after = decode(r.tokens[r.base:], skip_special_tokens=True)
        if after.endswith("\ufffd") and not final:
            return None
        delta = after[len(before):]
        r.text += delta
        r.base, r.read = r.read, len(r.tokens)
        return delta

    def _sample(self, logits, params: SamplingParams, generator) -> int:
        return sampling.sample(logits, params, generator)
