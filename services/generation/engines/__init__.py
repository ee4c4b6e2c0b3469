"""The engine registry: the chosen engine built from the settings.

Engines are registered in ``llm_twin.engines.ENGINES`` (name, options model, package); each package
here exports ``Engine``, a class taking ``(model_path, options, model_id=...)`` that implements
``services.generation.api.Engine``. Packages are imported only when chosen: the TensorRT-LLM one
needs a GPU image, the transformers one torch.
"""

from __future__ import annotations

import importlib

from llm_twin.engines import ENGINES, EngineOptions

from ..api import Engine
from ..errors import ModelUnavailable


def engine_class(name: str) -> type:
    if name not in ENGINES:
        raise ModelUnavailable(f"unknown generation engine {name!r}; use one of {', '.join(ENGINES)}")
    return importlib.import_module(ENGINES[name].module).Engine


def build(name: str, model: str, options: EngineOptions | None = None, **kwargs) -> Engine:
    """The engine ``name`` over the model folder ``model``; ``options``: its options model (its
    defaults when None)."""
    entry = ENGINES.get(name)
    if entry is not None and options is not None and not isinstance(options, entry.options):
        raise ModelUnavailable(f"engine {name!r} takes {entry.options.__name__}, not {type(options).__name__}")
    return engine_class(name)(model, options, **kwargs)
