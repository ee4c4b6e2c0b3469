"""The TensorRT-LLM backend's contract, against a stand-in for tensorrt_llm (tests/standins: the
real engine needs a GPU and NVIDIA's package index, neither of which exists here)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from services.generation.api import SamplingParams
from services.generation.core import Generator
from services.generation.errors import ModelUnavailable

STANDINS = Path(__file__).resolve().parents[1] / "standins"


@pytest.fixture
def backend(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDINS))
    for name in [m for m in sys.modules if m.startswith("tensorrt_llm")]:
        monkeypatch.delitem(sys.modules, name)
    from llm_twin.engines import TensorRTLLMOptions
    from services.generation.engines.tensorrt_llm import Engine as TensorRTLLMEngine

    return TensorRTLLMEngine("/models/llama-3.1-8b-instruct", TensorRTLLMOptions(max_lora_rank=32, max_loras=4))


def run(agen):
    async def collect():
        return [d async for d in agen]
    return asyncio.run(collect())


def test_builds_the_engine_with_lora_support(backend):
    assert backend.llm.model == "/models/llama-3.1-8b-instruct" and backend.model_id == "llama-3.1-8b-instruct"
    assert (backend.llm.lora_config.max_lora_rank, backend.llm.lora_config.max_loras) == (32, 4)


def test_streams_deltas_with_usage_and_finish_reason(backend):
    generator = Generator(backend)
    deltas = run(generator.stream([{"role": "user", "content": "hello there"}],
                                  SamplingParams(max_tokens=4, temperature=0.7, top_p=0.9, seed=3)))
    assert "".join(d.text for d in deltas) == "the twin answers in"
    assert [d.finish_reason for d in deltas] == [None, None, None, "length"]
    assert deltas[-1].completion_tokens == 4 and deltas[-1].prompt_tokens == 3  # the stand-in counts words
    sent = backend.llm.requests[-1].params
    assert (sent.max_tokens, sent.temperature, sent.top_p, sent.seed) == (4, 0.7, 0.9, 3)
    assert backend.llm.requests[-1].lora_request is None


def test_a_twin_adapter_goes_with_its_request(backend):
    backend.load_adapter("mara-quill", "/registry/mara-quill/v1/adapter")
    run(backend.stream("q", SamplingParams(max_tokens=2), adapter="mara-quill"))
    lora = backend.llm.requests[-1].lora_request
    assert (lora.lora_name, lora.lora_int_id, lora.lora_path) == ("mara-quill", 1, "/registry/mara-quill/v1/adapter")
    with pytest.raises(ModelUnavailable, match="not loaded"):
        run(backend.stream("q", SamplingParams(max_tokens=2), adapter="nobody"))


def test_leaving_early_aborts_the_engine_request(backend):
    async def two_then_leave():
        stream = backend.stream("q", SamplingParams(max_tokens=50))
        await anext(stream)
        await anext(stream)
        await stream.aclose()

    asyncio.run(two_then_leave())
    assert backend.llm.requests[-1].aborted and backend.stats()["cancelled"] == 1
    run(backend.stream("q", SamplingParams(max_tokens=3)))
    assert backend.llm.aborted == 1, "a finished request is not aborted"


def test_without_the_package_the_error_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    from services.generation.engines.tensorrt_llm import Engine as TensorRTLLMEngine

    with pytest.raises(ModelUnavailable, match="TWIN_GENERATION_ENGINE=transformers"):
        TensorRTLLMEngine("/models/x")
