"""The transformers engine (CPU or GPU): see engine.py."""

from .engine import TransformersEngine as Engine

__all__ = ["Engine"]
