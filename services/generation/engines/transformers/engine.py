"""The transformers engine: a Hugging Face model served with our own continuous batching.

This class loads the model (quantized for serving), takes requests in (``stream``), keeps the twins'
LoRA adapters and runs the decode thread. The batch is the scheduler's (scheduler.py); the model
steps in one of two loops: the lean forward (lean_loop.py over lean_llama.py, a Llama on a CPU) or
transformers' own forward (hf_loop.py, everything else). Running the loop ourselves (rather than
``model.generate``) is what gives per-request streaming, sampling settings and cancellation inside
one batch.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from collections.abc import AsyncIterator

from pydantic import ValidationError

from llm_twin.config import in_own_thread
from llm_twin.engines import TransformersOptions
from llm_twin.prompts import ChatTemplate

from ...api import Delta, SamplingParams
from ...errors import ModelUnavailable
from . import lean_llama, sampling
from . import quantization as quantization_
from .guided import Guides
from .hf_loop import HFLoop
from .requests import Request
from .scheduler import Scheduler

log = logging.getLogger(__name__)


def _pick_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ModelUnavailable(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16") from None


class TransformersEngine:
    def __init__(self, model: str, options: TransformersOptions | None = None, *, model_id: str | None = None,
                 **overrides):
        """``overrides``: TransformersOptions fields (``max_batch_size=4``), for callers without settings."""
        o = options or TransformersOptions()
        if overrides:
            quantization_.check(overrides.get("quantization", o.quantization))  # the error names the setting
            try:  # validated like the settings
                o = TransformersOptions.model_validate({**o.model_dump(), **overrides})
            except ValidationError as exc:
                raise ModelUnavailable(f"transformers engine options: {exc}") from None
        self.options = o
        device = self.device = o.device
        quantization = quantization_.resolve(o.quantization, device)
        int8_op = quantization_.int8_op(quantization, o.int8_kernel, device)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        def load():  # in a thread of its own (llm_twin.config.in_own_thread: why)
            loaded = AutoModelForCausalLM.from_pretrained(
                model, dtype=quantization_.load_dtype(quantization, _pick_dtype(o.dtype, device)))
            loaded.to(device).eval()
            return loaded, quantization_.quantize(loaded, quantization, device, int8_op)

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model, self.quantized_modules = in_own_thread(load)
        except OSError as exc:
            raise ModelUnavailable(f"cannot load model {model!r}: {exc}. Set TWIN_GENERATION_MODEL to a "
                                   "local model folder (nothing is downloaded at run time)") from exc
        self.template = ChatTemplate(self.tokenizer)
        if not self.template.present:
            raise ModelUnavailable(f"model {model!r} has no chat template; use an instruct/chat model")
        self.quantization, self.int8_op = quantization, int8_op
        self.model_id = model_id or os.path.basename(str(model).rstrip("/"))
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        eos_ids = {i for i in [*eos, self.tokenizer.eos_token_id] if i is not None}
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(eos_ids)
        self.guides = Guides(self.tokenizer, self.model.config.vocab_size)
        self.scheduler = Scheduler(self.tokenizer, eos_ids, pad_id, max_batch_size=o.max_batch_size,
                                   batch_wait_s=o.batch_wait_s, guides=self.guides)
        self._model_lock = threading.Lock()
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, then goes away).
        cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.hf_loop = HFLoop(self.scheduler, self.forward, device, cache_arg)
        self.lean = in_own_thread(self._lean_loop)
        self._worker = threading.Thread(target=self._run, name="generation-batcher", daemon=True)
        self._worker.start()

    def _lean_loop(self):
        """The lean forward where it computes what this model computes (a Llama on a CPU)."""
        from .lean_loop import LeanLoop

        o = self.options
        why_not = "TWIN_GENERATION_LEAN=false" if not o.lean else (
            "a GPU (transformers' forward uses its kernels)" if self.device != "cpu"
            else lean_llama.supports(self.model))
        if why_not:
            log.info("generation decodes with transformers' forward: %s", why_not)
            return None
        engine = lean_llama.LeanLlama(self.model, int8=self.quantization == "int8", rows=o.max_batch_size,
                                      int8_op=self.int8_op)
        return LeanLoop(self.scheduler, engine, o.prefill_chunk, o.prefix_cache_tokens)

    # -- the Engine protocol (api.py) ----------------------------------------------------------------
    async def stream(self, prompt: str, params: SamplingParams, adapter: str | None = None) -> AsyncIterator[Delta]:
        if adapter is not None and adapter not in self.adapters():
            raise ModelUnavailable(f"adapter {adapter!r} is not loaded")
        request = Request(self.template.encode(prompt), params, asyncio.get_running_loop(), asyncio.Queue(),
                          adapter=adapter)
        # Everything that can fail for one request's own input fails here, before it joins a batch.
        request.generator = sampling.seeded_generator(params.seed, self.device)
        if params.json_schema is not None:
            request.matcher = await asyncio.to_thread(self.guides.matcher, params.json_schema)
        self.scheduler.submit(request)
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

    def warm(self) -> None:
        self.guides.warm()

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

    def stats(self) -> dict:
        return self.scheduler.stats()

    def close(self) -> None:
        self.scheduler.close()
        self._worker.join(timeout=30)

    # -- the model side ------------------------------------------------------------------------------
    def forward(self, rows: list[Request], **inputs):
        """transformers' forward for ``rows`` (each with its own adapter) -> next-token logits."""
        if self.adapters():
            inputs["adapter_names"] = [r.adapter or "__base__" for r in rows]
        with self._model_lock:
            return self.model(use_cache=True, **inputs).logits[:, -1, :]

    def _run(self) -> None:
        """The decode thread: a batch from the scheduler, served by a loop until it empties."""
        s = self.scheduler
        while (batch := s.next_batch()) is not None:
            try:
                (self.lean or self.hf_loop).serve(batch)
                s.flush()
            except Exception as exc:  # a broken batch fails its requests, never the worker
                log.exception("generation batch failed")
                s.fail_in_flight(exc)
            finally:
                s.end_batch()
