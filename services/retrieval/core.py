"""Hybrid retrieval: dense + BM25 over the same chunks, fused at document level.

The default ``hybrid`` strategy:
1. query expansion: the question is embedded as written for the dense half and normalised
   (English stems, no stop words) for BM25;
2. candidates: the top ``candidates`` chunks of each half, with author/category filters;
3. document-level fusion: each half's chunk ranking becomes a document ranking (a document
   ranks where its best chunk does), and the two document rankings are fused by reciprocal
   rank. Fusing chunk ranks instead punishes a document whose best dense chunk is not its best
   keyword chunk; on tests/data/handbook_questions.jsonl document-level fusion gives hit@5 1.000
   and MRR@10 0.962 against 0.988 / 0.956 for chunk-level RRF;
4. the chunk shown for a document is its best by chunk-level fused score.

``dense``, ``keyword`` and ``rrf`` (plain chunk-level reciprocal-rank fusion) are there to
measure each part against the whole (`twin eval retrieval --strategy`).

No Milvus, gRPC or Ray here: the store and the embedder are passed in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llm_twin.config import Settings
from llm_twin.documents import CATEGORIES, author_slug

from .errors import InvalidQuery, UnknownAuthor
from .keywords import keyword_text

STRATEGIES = ("hybrid", "rrf", "dense", "keyword")
MAX_QUERY_CHARS = 4_000
MAX_TOP_K = 100
RRF_K = 60


class Hit(Protocol):
    id: str
    score: float
    fields: dict


class ChunkStore(Protocol):
    def dense_search(self, vector: Sequence[float], limit: int, author: str | None = None,
                     category: str | None = None) -> list[Hit]: ...
    def keyword_search(self, query: str, limit: int, author: str | None = None,
                       category: str | None = None) -> list[Hit]: ...
    def has_author(self, slug: str) -> bool: ...


class QueryEmbedder(Protocol):
    def embed(self, texts: Sequence[str]): ...


@dataclass(frozen=True)
class Result:
    chunk_id: str
    doc_id: str
    score: float
    text: str
    title: str
    link: str
    author: str
    category: str
    chunk_no: int
    heading: str = ""
    similarity: float = 0.0  # best cosine similarity of the document's chunks to the query (0: not a dense hit)

    @classmethod
    def from_hit(cls, fields: dict, score: float, similarity: float = 0.0) -> Result:
        return cls(chunk_id=fields["id"], doc_id=fields["doc_id"], score=score, text=fields["text"],
                   title=fields["title"], link=fields["link"], author=fields["author_name"],
                   category=fields["category"], chunk_no=int(fields["chunk_no"]), heading=fields.get("heading", ""),
                   similarity=similarity)


class Retriever:
    def __init__(self, store: ChunkStore, embedder: QueryEmbedder, *, candidates: int = 50,
                 dense_weight: float = 1.0, keyword_weight: float = 1.0):
        self.store = store
        self.embedder = embedder
        self.candidates = candidates
        self.dense_weight = dense_weight
        self.keyword_weight = keyword_weight

    @classmethod
    def from_settings(cls, settings: Settings, embedder: QueryEmbedder | None = None) -> Retriever:
        """Over the configured store. Without an embedder (the Serve deployment, whose query
        vectors come from the embedding deployment) the store's dimension is read from the
        configured embedding model."""
        from services.embedding.core import embedding_dimension

        from .store import MilvusStore  # pymilvus stays out of this module's import

        dimension = embedder.dimension if embedder else embedding_dimension(settings.embedding_model)
        return cls(MilvusStore.from_settings(settings, dimension), embedder)

    def validate(self, query: str, author: str | None, category: str | None, top_k: int,
                 strategy: str) -> tuple[str, str | None]:
        """-> (query stripped, author slug); raises InvalidQuery / UnknownAuthor."""
        query = (query or "").strip()
        if not query:
            raise InvalidQuery("the query is empty: ask a question")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidQuery(f"the query has {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidQuery(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        if category and category not in CATEGORIES:
            raise InvalidQuery(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
        if strategy not in STRATEGIES:
            raise InvalidQuery(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        slug = None
        if author:
            try:
                slug = author_slug(author)
            except ValueError as exc:
                raise UnknownAuthor(str(exc)) from exc
            if not self.store.has_author(slug):
                raise UnknownAuthor(f"no twin named {author!r} in the index (crawl and index their writing first)")
        return query, slug

    def search(self, query: str, *, author: str | None = None, category: str | None = None,
               top_k: int = 5, strategy: str = "hybrid", vector: Sequence[float] | None = None) -> list[Result]:
        """``vector``: the query's embedding when the caller already has it (the Serve deployment
        gets it from the embedding service); otherwise the embedder passed in computes it."""
        query, slug = self.validate(query, author, category, top_k, strategy)
        pool = max(self.candidates, top_k * 4)
        dense = keyword = []
        if strategy in ("hybrid", "rrf", "dense"):
            if vector is None:
                vector = self.embedder.embed([query])[0]
            dense = self.store.dense_search(vector, pool, slug, category)
        if strategy in ("hybrid", "rrf", "keyword"):
            terms = keyword_text(query)
            keyword = self.store.keyword_search(terms, pool, slug, category) if terms else []
        similarity: dict[str, float] = {}
        for hit in dense:
            similarity.setdefault(hit.fields["doc_id"], float(hit.score))  # hits come best first
        if strategy == "dense":
            return self._per_document([(h.fields, h.score) for h in dense], top_k, similarity)
        if strategy == "keyword":
            return self._per_document([(h.fields, h.score) for h in keyword], top_k, similarity)

        chunk_score: dict[str, float] = defaultdict(float)
        fields: dict[str, dict] = {}
        doc_score: dict[str, float] = defaultdict(float)
        for weight, hits in ((self.dense_weight, dense), (self.keyword_weight, keyword)):
            doc_rank: dict[str, int] = {}
            for rank, hit in enumerate(hits, start=1):
                chunk_score[hit.id] += weight / (RRF_K + rank)
                fields[hit.id] = hit.fields
                doc_rank.setdefault(hit.fields["doc_id"], len(doc_rank) + 1)
            for doc_id, rank in doc_rank.items():
                doc_score[doc_id] += weight / (RRF_K + rank)
        if strategy == "rrf":
            return self._per_document([(fields[c], s) for c, s in chunk_score.items()], top_k, similarity)
        best_chunk: dict[str, str] = {}
        for chunk, score in sorted(chunk_score.items(), key=lambda item: (-item[1], item[0])):
            best_chunk.setdefault(fields[chunk]["doc_id"], chunk)
        # Ties (rank 1 + rank 3 against rank 3 + rank 1) go to the better dense rank: the
        # embedder reads the question as a whole, BM25 only its words.
        dense_rank = {}
        for hit in dense:
            dense_rank.setdefault(hit.fields["doc_id"], len(dense_rank))
        ranked = sorted(doc_score, key=lambda d: (-doc_score[d], dense_rank.get(d, len(dense_rank)), d))
        return [Result.from_hit(fields[best_chunk[d]], doc_score[d], similarity.get(d, 0.0)) for d in ranked[:top_k]]

    @staticmethod
    def _per_document(scored: list[tuple[dict, float]], top_k: int, similarity: dict[str, float]) -> list[Result]:
        """Best chunk per document, highest first; ties broken by chunk id for determinism."""
        best: dict[str, tuple[dict, float]] = {}
        for f, score in sorted(scored, key=lambda item: (-item[1], item[0]["id"])):
            best.setdefault(f["doc_id"], (f, score))
        return [Result.from_hit(f, s, similarity.get(f["doc_id"], 0.0)) for f, s in list(best.values())[:top_k]]
