"""The TensorRT-LLM engine (GPU, its own image): see engine.py."""

from .engine import TensorRTLLMEngine as Engine

__all__ = ["Engine"]
