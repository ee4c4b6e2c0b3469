"""The TensorRT-LLM engine (GPU): `tensorrt_llm.LLM` behind the Engine protocol (api.py).

Kept thin on purpose: the engine does the batching (in-flight), the KV cache and the LoRA
adapters itself. Its PyTorch backend loads Hugging Face checkpoints directly, so the model folder
the transformers backend serves works here unchanged. Used calls, from TensorRT-LLM's LLM API:
`LLM(model=..., lora_config=LoraConfig(...))`, `llm.tokenizer`,
`llm.generate_async(prompt, sampling_params=..., lora_request=..., streaming=True)` returning a
result that is async-iterable while streaming, whose `outputs[0]` has `text_diff`,
`token_ids` and `finish_reason`, with `prompt_token_ids` and `abort()`;
`SamplingParams(max_tokens, temperature, top_p, seed, repetition_penalty)`;
`LoRARequest(name, id, path)`.

tensorrt-llm cannot be installed on the CPU machines this project is tested on (PyPI holds only
a stub that downloads from NVIDIA's own index); tests/unit/test_tensorrt_backend.py checks this
engine against a stand-in that follows the API above. The GPU image and command are in docs/training.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from llm_twin.engines import TensorRTLLMOptions
from llm_twin.prompts import ChatTemplate

from ...api import Delta, SamplingParams
from ...errors import InvalidGenerationRequest, ModelUnavailable


class TensorRTLLMEngine:
    def __init__(self, model: str, options: TensorRTLLMOptions | None = None, *, llm=None,
                 model_id: str | None = None):
        self.options = o = options or TensorRTLLMOptions()
        if llm is None:
            try:
                from tensorrt_llm import LLM
                from tensorrt_llm.lora_helper import LoraConfig
            except ImportError as exc:
                raise ModelUnavailable("tensorrt_llm is not installed: use the TensorRT-LLM GPU image (see "
                                       "docs/training.md), "
                                       "or TWIN_GENERATION_ENGINE=transformers") from exc
            llm = LLM(model=model, lora_config=LoraConfig(max_lora_rank=o.max_lora_rank, max_loras=o.max_loras))
        self.llm = llm
        self.template = ChatTemplate(llm.tokenizer)
        self.model_id = model_id or str(model).rstrip("/").rsplit("/", 1)[-1]
        self._adapters: dict[str, tuple[int, str]] = {}  # name -> (engine's LoRA id, path)
        self._stats = {"requests": 0, "completed": 0, "cancelled": 0, "active": 0}

    def warm(self) -> None:
        """Nothing to prepare ahead of the first request."""

    def adapters(self) -> set[str]:
        return set(self._adapters)

    def load_adapter(self, name: str, path: str) -> None:
        """TensorRT-LLM loads a LoRA on first use of its request; registering it is all we do."""
        if name not in self._adapters:
            self._adapters[name] = (len(self._adapters) + 1, path)

    def unload_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)

    def _sampling(self, params: SamplingParams):
        from tensorrt_llm import SamplingParams as EngineSampling

        if params.logprobs is not None:
            raise InvalidGenerationRequest("logprobs are not available with the tensorrt-llm engine here; "
                                           "remove them or use the transformers engine")
        if params.json_schema is not None:  # its guided decoding is not wired here yet (no GPU to check it on)
            raise InvalidGenerationRequest("a JSON schema (response_format, tools) is not available with the "
                                           "tensorrt-llm engine here; use the transformers engine")
        extra = {}
        for name in ("top_k", "presence_penalty", "frequency_penalty"):
            if getattr(params, name):
                extra[name] = getattr(params, name)
        return EngineSampling(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                              seed=params.seed, repetition_penalty=params.repetition_penalty, **extra)

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        if adapter not in self._adapters:
            raise ModelUnavailable(f"adapter {adapter!r} is not loaded")
        from tensorrt_llm.executor.request import LoRARequest

        lora_id, path = self._adapters[adapter]
        return LoRARequest(adapter, lora_id, path)

    async def stream(self, prompt: str, params: SamplingParams, adapter: str | None = None) -> AsyncIterator[Delta]:
        result = self.llm.generate_async(prompt, sampling_params=self._sampling(params),
                                         lora_request=self._lora(adapter), streaming=True)
        self._stats["requests"] += 1
        self._stats["active"] += 1
        finished = False
        try:
            async for output in result:
                completion = output.outputs[0]
                reason = completion.finish_reason if output.finished else None
                if completion.text_diff or reason:
                    yield Delta(completion.text_diff, reason, len(output.prompt_token_ids), len(completion.token_ids))
                if output.finished:
                    finished = True
                    self._stats["completed"] += 1
                    return
        finally:
            self._stats["active"] -= 1
            if not finished:  # the client left: stop the engine's work for it
                result.abort()
                self._stats["cancelled"] += 1

    def stats(self) -> dict:
        return dict(self._stats)

    def close(self) -> None:
        shutdown = getattr(self.llm, "shutdown", None)
        if shutdown:
            shutdown()
