"""Second-stage reranking of the fused candidates.

- ``SentenceReranker`` (works offline with what ships here): late interaction at sentence level
  with the embedder the index already uses. A chunk holds ~200 tokens; its one vector blurs a
  question answered by one sentence inside it. Each candidate chunk is split into sentences
  (pairs of neighbouring sentences too, so an answer spread over two survives), every piece is
  embedded, and the chunk scores as its best piece's cosine similarity to the question.
- ``CrossEncoderReranker``: a cross-encoder from a local model folder (``TWIN_RERANKER_MODEL``;
  e.g. a sentence-transformers ``cross-encoder/ms-marco-MiniLM-L-6-v2`` copied there). Nothing is
  downloaded: a folder that is not there is an error at start, naming the setting.

Both return one score per text, higher is better; the Retriever fuses their ranking with the
first stage's (see core.py), so a reranker can reorder but not discard what both halves agreed on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from llm_twin.features.chunk import split_sentences

MIN_PIECE_CHARS = 20  # shorter pieces ("Image by author.") match everything a little


class Reranker(Protocol):
    def scores(self, query: str, texts: Sequence[str], query_vector: Sequence[float] | None = None) -> list[float]: ...


def sentence_pieces(text: str) -> list[str]:
    """Sentences of a chunk and pairs of neighbouring sentences, each at least MIN_PIECE_CHARS."""
    sentences = [s for line in text.splitlines() for s in split_sentences(line)]
    pieces = [s for s in sentences if len(s) >= MIN_PIECE_CHARS]
    pieces += [f"{a} {b}" for a, b in zip(sentences, sentences[1:], strict=False) if len(a) + len(b) >= MIN_PIECE_CHARS]
    return pieces or [text]


class SentenceReranker:
    def __init__(self, embedder):
        self.embedder = embedder

    def scores(self, query: str, texts: Sequence[str], query_vector: Sequence[float] | None = None) -> list[float]:
        if not texts:
            return []
        pieces = [sentence_pieces(t) for t in texts]
        flat = [p for group in pieces for p in group]
        if query_vector is None:
            vectors = self.embedder.embed([query, *flat])
            query_vector, vectors = vectors[0], vectors[1:]
        else:
            vectors = self.embedder.embed(flat)
        similarity = np.asarray(vectors, dtype=np.float32) @ np.asarray(query_vector, dtype=np.float32)
        out, start = [], 0
        for group in pieces:
            out.append(float(similarity[start:start + len(group)].max()))
            start += len(group)
        return out


class CrossEncoderReranker:
    def __init__(self, model_path: str, device: str = "cpu"):
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"TWIN_RERANKER_MODEL={model_path!r} is not a folder: point it at a local "
                                    "cross-encoder model (nothing is downloaded), or unset it")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(model_path, device=device, local_files_only=True)

    def scores(self, query: str, texts: Sequence[str], query_vector: Sequence[float] | None = None) -> list[float]:
        if not texts:
            return []
        return [float(s) for s in self.model.predict([(query, t) for t in texts], show_progress_bar=False)]
