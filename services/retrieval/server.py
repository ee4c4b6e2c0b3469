"""The retrieval deployment: owns the vector store (a Milvus Lite file is locked by the process
that opens it, so exactly one replica opens it; a Milvus server URI allows more) and asks the
embedding deployment for query vectors."""

from __future__ import annotations

import asyncio
import threading

from ray import serve

from llm_twin.config import Settings
from llm_twin.documents import author_slug
from llm_twin.telemetry import span
from services.embedding.core import embedding_dimension

from .core import Retriever, asking_texts
from .indexer import Indexer


class _HandleEmbedder:
    """The indexer's embedder over the embedding deployment (called from a worker thread, where
    blocking on a handle's ``result()`` is allowed)."""

    def __init__(self, handle, name: str, dimension: int):
        self.handle = handle
        self.name = name
        self.dimension = dimension

    def count_tokens(self, texts) -> list[int]:
        return self.handle.count_tokens.remote(list(texts)).result()

    def embed(self, texts, on_batch=None):
        import numpy as np

        out = []
        for start in range(0, len(texts), 64):
            batch = list(texts[start:start + 64])
            out.append(self.handle.embed.remote(batch).result()["vectors"])
            if on_batch:
                on_batch(len(batch))
        return np.vstack(out) if out else np.zeros((0, self.dimension), dtype=np.float32)


@serve.deployment(name="Retrieval", ray_actor_options={"num_cpus": 0.25})
class RetrievalDeployment:
    def __init__(self, settings: dict, embedding):
        self.settings = Settings(**settings)
        self.embedding = embedding
        dimension = embedding_dimension(self.settings.embedding.model)
        # Query vectors come from the embedding deployment (and, with the sentence reranker, the
        # vectors of candidate sentences): the retriever calls it from its worker thread.
        self.retriever = Retriever.from_settings(self.settings, _HandleEmbedder(embedding, "", dimension))
        self.store = self.retriever.store
        # One MilvusClient, many request threads: keep its calls one at a time.
        self._lock = threading.Lock()
        self._index_lock = asyncio.Lock()

    def _locked(self, fn, *args, **kwargs):
        with self._lock:
            return fn(*args, **kwargs)

    async def search(self, query: str, twin: str | None = None, category: str | None = None, top_k: int = 5,
                     strategy: str | None = None) -> list:
        with span("retrieval.search", **{"db.system.name": "milvus", "twin.id": twin or "",
                                         "retrieval.strategy": strategy or self.retriever.strategy,
                                         "retrieval.top_k": top_k}) as s:
            strategy = strategy or self.retriever.strategy
            query, _ = await asyncio.to_thread(self._locked, self.retriever.validate, query, twin or None,
                                               category or None, top_k, strategy)
            vector = None
            if strategy != "keyword":
                vector = (await self.embedding.embed.remote([query]))["vectors"][0]
            results = await asyncio.to_thread(self._locked, self.retriever.search, query, author=twin or None,
                                              category=category or None, top_k=top_k, strategy=strategy,
                                              vector=vector)
            s.set_attribute("retrieval.results", len(results))
        return results

    async def answer_search(self, query: str, question: str, twin: str, top_k: int = 4, opening: str | None = None):
        """For a chat answer: results, evidence and calibrated relevance (retrieval.core.Retrieval).
        ``opening``: what the question followed, when ``query`` is a longer question's asking clause."""
        # The same span name as search(): one search per chat hop, whichever call made it.
        with span("retrieval.search", **{"db.system.name": "milvus", "twin.id": twin, "retrieval.purpose": "answer",
                                         "retrieval.strategy": self.retriever.strategy,
                                         "retrieval.top_k": top_k}) as s:
            query, _ = await asyncio.to_thread(self._locked, self.retriever.validate, query, twin, None, top_k,
                                               self.retriever.strategy)
            vector = own = variants = around = None
            if self.retriever.strategy != "keyword":
                # A follow-up searched with the question before it also needs its own words'
                # vector (Retrieval.question_similarity), the relevance decision the question's
                # variants without each of its words, an asking clause its opening and whole
                # question (Retrieval.asking_lead): one call embeds them all.
                texts = [query] if question.strip() in ("", query) else [query, question.strip()]
                framed = asking_texts(opening, query) if opening else []
                words = await asyncio.to_thread(self._locked, self.retriever.word_texts, question or query, twin)
                vectors = (await self.embedding.embed.remote(texts + framed + words))["vectors"]
                vector, own = vectors[0], (vectors[1] if len(texts) > 1 else None)
                around = vectors[len(texts):len(texts) + len(framed)] if framed else None
                variants = vectors[len(texts) + len(framed):]
            found = await asyncio.to_thread(self._locked, self.retriever.answer_search, query, question,
                                            author=twin, top_k=top_k, vector=vector, question_vector=own,
                                            variant_vectors=variants, opening=opening, opening_vectors=around)
            s.set_attribute("retrieval.results", len(found.results))
            if found.relevance is not None:
                s.set_attribute("retrieval.relevance", round(found.relevance, 4))
            if found.asking_lead is not None:
                s.set_attribute("retrieval.asking_lead", round(found.asking_lead, 4))
            if found.other_twin_lead is not None:
                s.set_attribute("retrieval.other_twin_lead", round(found.other_twin_lead, 4))
        return found

    async def twins(self) -> dict:
        return await asyncio.to_thread(self._locked, self.store.twins)

    async def has_twin(self, twin: str) -> bool:
        try:
            slug = author_slug(twin)
        except ValueError:
            return False
        return await asyncio.to_thread(self._locked, self.store.has_author, slug)

    async def index(self) -> dict:
        """Index what the warehouse holds that the store does not (incremental; see Indexer).
        Searches wait while it runs: Milvus Lite serves one client at a time anyway."""
        with span("retrieval.index"):
            info = await self.embedding.info.remote()
            embedder = _HandleEmbedder(self.embedding, info["model"], info["dimension"])
            return await asyncio.to_thread(self._locked, self._index, embedder)

    def _index(self, embedder: _HandleEmbedder) -> dict:
        report = Indexer.from_settings(self.settings, embedder, self.store).run()
        return {"chunks_written": report.chunks_written, "summary": report.summary()}
