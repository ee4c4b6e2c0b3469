"""The generation engines this platform can serve with: one entry per engine, its options and where
its code lives.

This table is the one place an engine is registered. The settings (``generation.engine`` and one
options section per engine), the TwinModel's ``serving.engine`` enum, the CRD and the configuration
reference all read it; ``services.generation.engines`` imports the engine named here when it is
chosen (the foundation names it as a string: it never imports a service). Adding an engine is a
folder under ``services/generation/engines/``, its options model here and one line in ``ENGINES``
(DEVELOPERS.md, "Adding a generation engine").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineOptions(BaseModel):
    """Options of one engine; a field set for an engine that is not chosen is refused (Settings)."""

    model_config = ConfigDict(extra="forbid")


class TransformersOptions(EngineOptions):
    device: str = Field("cpu", description="Torch device for generation (cpu, cuda, cuda:1).",
                        json_schema_extra={"flat": "generation_device"})
    dtype: str = Field("auto", description="Weights dtype: auto (float32 on CPU, bfloat16 on GPU), float32, "
                       "bfloat16, float16.", json_schema_extra={"flat": "generation_dtype"})
    quantization: Literal["auto", "none", "int8", "bf16"] = Field(
        "auto", description="Serving weights: int8 (weight-only, per-channel scales, bf16 activations), bf16, or "
        "none; auto = int8 on a CPU, none on a GPU. `make bench` prints each one's speed and quality delta "
        "against none.", json_schema_extra={"flat": "generation_quantization"})
    int8_kernel: Literal["auto", "native", "torch"] = Field(
        "auto", description="What multiplies int8 weights: native (a kernel built once with the machine's C++ "
        "compiler, for CPUs with AVX512-BF16 or AVX2 + FMA: one weight widening per step for up to 8 rows), torch "
        "(torch._weight_int8pack_mm), or auto = native where it builds, else torch, saying why.")
    lean: bool = Field(
        True, description="Decode Llama-architecture models on a CPU with the lean forward (fused weights, a KV "
        "cache allocated once, chunked prefill, prefix caching); false uses transformers' own forward.",
        json_schema_extra={"flat": "generation_lean"})
    prefill_chunk: int = Field(
        64, ge=0, le=8192, description="Prompt tokens prefilled per decode step of the running requests (lean "
        "loop), so a long prompt does not stall them; 0 prefills a prompt at once.")
    prefix_cache_tokens: int = Field(
        4096, ge=0, le=1_000_000, description="Prompt-prefix KV kept for reuse across requests (lean loop), in "
        "tokens; 0 turns prefix caching off.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Most requests decoded together in one batch.")
    batch_wait_s: float = Field(0.01, ge=0, le=1,
                                description="How long a new batch waits for more requests before it starts.")


class TensorRTLLMOptions(EngineOptions):
    max_lora_rank: int = Field(64, ge=1, le=1024, description="Largest LoRA rank the engine reserves room for.")
    max_loras: int = Field(8, ge=1, le=256, description="Twins' adapters the engine keeps loaded at once.")


@dataclass(frozen=True)
class Engine:
    options: type[EngineOptions]
    module: str  # the package under services/generation/engines whose `Engine` class implements it
    summary: str


ENGINES: dict[str, Engine] = {
    "transformers": Engine(TransformersOptions, "services.generation.engines.transformers",
                           "Hugging Face transformers on CPU or GPU, with its own continuous batching"),
    "tensorrt-llm": Engine(TensorRTLLMOptions, "services.generation.engines.tensorrt_llm",
                           "NVIDIA TensorRT-LLM on a GPU (its own image), in-flight batching"),
}

EngineName = Literal[tuple(ENGINES)]  # type: ignore[valid-type]  # the settings' and the TwinModel's enum
DEFAULT_ENGINE = "transformers"


def section_name(engine: str) -> str:
    """The settings section holding an engine's options (``tensorrt-llm`` -> ``tensorrt_llm``)."""
    return engine.replace("-", "_")
