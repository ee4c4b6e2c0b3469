"""Retrieval: dense + BM25 over the same chunks, fused, with query understanding in front.

The default pipeline (chosen on tests/data/handbook_questions_hard.jsonl, per kind; figures in
docs/evaluation.md):
1. the caller resolves a follow-up against its conversation first (``query.contextual_query``:
   the chat path and `twin eval retrieval` do);
2. self-query: with no author given, an author named in the question becomes the filter
   (``query.self_query``; only authors in the index);
3. candidates: the top ``candidates`` chunks of each half (dense on the question as written,
   BM25 on its English stems without stop words), with author/category filters;
4. ``rrf`` (default): the two chunk rankings fused by reciprocal rank, then one result per
   document (its best chunk). ``hybrid`` fuses per document instead (a document ranks where its
   best chunk does in each half): better on the easy set, worse at recall@5 on the hard one;
5. optional reranking of the top ``rerank_depth`` documents (rerank.py), fused with the first
   stage by reciprocal rank. Off by default: the offline sentence reranker lowered hit@1 on
   the hard set (0.887 -> 0.758) at ~3 s per query on 2 cores.

``dense`` and ``keyword`` are there to measure each half against the whole
(`twin eval retrieval --strategy`).

No Milvus, gRPC or Ray here: the store and the embedder are passed in.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llm_twin.config import Settings
from llm_twin.documents import CATEGORIES, author_slug

from .errors import InvalidQuery, UnknownAuthor
from .keywords import keyword_text
from .query import self_query as understand
from .relevance import TOP_RESULTS, Evidence, RelevanceModel, gather, word_importance, word_variants
from .relevance import load as load_relevance
from .rerank import CrossEncoderReranker, Reranker, SentenceReranker

STRATEGIES = ("rrf", "hybrid", "dense", "keyword")
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
    def similarity(self, vector: Sequence[float], chunk_ids: Sequence[str]) -> dict[str, float]: ...
    def best_elsewhere(self, vector: Sequence[float], author: str) -> float | None: ...
    def has_author(self, slug: str) -> bool: ...
    def twins(self) -> dict[str, dict]: ...


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


@dataclass(frozen=True)
class Retrieval:
    """What a chat answer is given: the results, the evidence that they cover the question, and
    the calibrated probability that they do (None without a relevance model for the embedder).
    ``question_similarity``: when the text searched was more than the question (a follow-up
    searched with the question it follows), the dense similarity of the question's own words to
    the best result's passage (None when the question itself was searched).
    ``other_twin_lead``: how much more similar (cosine) the best passage of another twin in the
    index is to the text searched than this twin's best: well above zero, someone else wrote
    about this, not this twin (None: no other twin in the index, or no dense search).
    ``asking_lead``: when the question searched is the asking clause of a longer one (``opening``
    passed; query.asking_clause), how much closer the whole question's embedding is to the asking
    clause than to its opening: near or above zero the opening is context about the asker, well
    below it the opening holds the topic (None: no opening, or no dense search)."""

    results: list[Result]
    evidence: Evidence
    relevance: float | None
    question_similarity: float | None = None
    other_twin_lead: float | None = None
    asking_lead: float | None = None


def asking_texts(opening: str, asking: str) -> list[str]:
    """What ``asking_lead`` embeds besides the asking clause: the opening and the whole question."""
    return [opening, f"{opening} {asking}"]


def asking_lead(asking: Sequence[float], opening: Sequence[float], whole: Sequence[float]) -> float:
    """cos(whole, asking clause) - cos(whole, opening), over the three embeddings."""
    import numpy as np

    a, o, w = (np.asarray(v, dtype=np.float64) for v in (asking, opening, whole))
    a, o, w = (v / max(float(np.linalg.norm(v)), 1e-12) for v in (a, o, w))
    return float(w @ a - w @ o)


class Retriever:
    def __init__(self, store: ChunkStore, embedder: QueryEmbedder, *, candidates: int = 50,
                 dense_weight: float = 1.0, keyword_weight: float = 1.0, reranker: Reranker | None = None,
                 rerank_depth: int = 10, rerank_chunks: int = 2, first_stage_weight: float = 1.0,
                 strategy: str = "rrf", relevance: RelevanceModel | None = None):
        self.store = store
        self.strategy = strategy
        self.embedder = embedder
        self.candidates = candidates
        self.dense_weight = dense_weight
        self.keyword_weight = keyword_weight
        self.reranker = reranker
        self.rerank_depth = rerank_depth
        self.rerank_chunks = rerank_chunks
        self.first_stage_weight = first_stage_weight
        self.relevance = relevance
        self._authors_cache: tuple[float, dict] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, embedder: QueryEmbedder | None = None) -> Retriever:
        """Over the configured store. Without an embedder (the Serve deployment, whose query
        vectors come from the embedding deployment) the store's dimension is read from the
        configured embedding model."""
        from services.embedding.core import embedding_dimension

        from .store import MilvusStore  # pymilvus stays out of this module's import

        dimension = embedder.dimension if embedder else embedding_dimension(settings.embedding.model)
        reranker = None
        if settings.retrieval.reranker_model == "sentence":
            reranker = SentenceReranker(embedder)
        elif settings.retrieval.reranker_model:
            reranker = CrossEncoderReranker(settings.retrieval.reranker_model, settings.embedding.device)
        return cls(MilvusStore.from_settings(settings, dimension), embedder, reranker=reranker,
                   strategy=settings.retrieval.strategy,
                   relevance=load_relevance(settings.embedding.model, settings.data_dir))

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
               top_k: int = 5, strategy: str | None = None, vector: Sequence[float] | None = None,
               self_query: bool | None = None, rerank: bool | None = None) -> list[Result]:
        return self._search(query, author=author, category=category, top_k=top_k, strategy=strategy, vector=vector,
                            self_query=self_query, rerank=rerank)[0]

    def answer_search(self, query: str, question: str | None = None, *, author: str | None = None, top_k: int = 4,
                      vector: Sequence[float] | None = None,
                      question_vector: Sequence[float] | None = None,
                      variant_vectors: Sequence[Sequence[float]] | None = None,
                      opening: str | None = None,
                      opening_vectors: Sequence[Sequence[float]] | None = None) -> Retrieval:
        """A search for a chat answer: the results and the evidence that the author's writing
        covers ``question`` (the user's own words; ``query`` may carry the conversation before it),
        with the calibrated probability when a relevance model is set. ``question_vector``: the
        question's embedding when it differs from the query (else the embedder computes it);
        ``variant_vectors``: the embeddings of ``word_texts(question or query, author)`` (else
        the embedder computes them). ``opening``: the words the question followed, when ``query``
        is the asking clause of a longer question (``Retrieval.asking_lead``); ``opening_vectors``:
        the embeddings of ``asking_texts(opening, query)`` (else the embedder computes them)."""
        results, dense, keyword, searched, vector = self._search(query, author=author,
                                                                 top_k=max(top_k, TOP_RESULTS), vector=vector)
        chunks = sum(twin["chunks"] for twin in self._authors().values())
        own_words = self._without_twin_name(question or query, author_slug(author) if author else None)
        importance = None
        if self.strategy != "keyword" and self.embedder is not None:
            terms, texts = word_variants(own_words)
            if terms:
                if variant_vectors is None or len(variant_vectors) != len(texts):
                    variant_vectors = self.embedder.embed(texts)
                importance = word_importance(terms, variant_vectors)
        evidence = gather(own_words, searched, results, dense, keyword, chunks, importance)
        probability = self.relevance.probability(evidence) if self.relevance is not None else None
        own = None
        if question and question.strip() != query.strip() and results and self.strategy != "keyword":
            own = self._question_similarity(question, question_vector, results[0].chunk_id)
        lead = None
        if opening and vector is not None and self.embedder is not None:
            if opening_vectors is None or len(opening_vectors) != 2:
                opening_vectors = self.embedder.embed(asking_texts(opening, query))
            lead = asking_lead(vector, *opening_vectors)
        return Retrieval(results[:top_k], evidence, probability, own, self._other_twin_lead(author, vector, dense),
                         lead)

    def word_texts(self, question: str, author: str | None) -> list[str]:
        """What the relevance decision embeds to weigh the question's words (``relevance.word_variants``
        of the question without the twin's name): a caller with its own embedding service embeds
        them with the query and passes ``answer_search(variant_vectors=...)``."""
        if self.strategy == "keyword":
            return []
        terms, texts = word_variants(self._without_twin_name(question, author_slug(author) if author else None))
        return texts if terms else []

    def _other_twin_lead(self, author: str | None, vector: Sequence[float] | None, dense: Sequence) -> float | None:
        """Another twin's best dense similarity minus this twin's (one more search, limit 1, and
        only when the index holds someone else's writing)."""
        if not author or vector is None or not dense or len(self._authors()) < 2:
            return None
        elsewhere = self.store.best_elsewhere(vector, author_slug(author))
        return None if elsewhere is None else elsewhere - float(dense[0].score)

    def _without_twin_name(self, text: str, slug: str | None) -> str:
        """``text`` without a mention of the twin ``slug`` by name (self-query's reading, with
        this one author: a first or last name alone counts)."""
        name = self._authors().get(slug, {}).get("name") if slug else None
        if not name:
            return text
        plan = understand(text, [(slug, name)])
        return plan.query if plan.author == slug else text

    def _question_similarity(self, question: str, vector: Sequence[float] | None, chunk_id: str) -> float:
        """The question's own dense similarity to the passage found (its exact chunk, not the
        document's best: a long article has some chunk near almost any question)."""
        if vector is None:
            vector = self.embedder.embed([question])[0]
        return self.store.similarity(vector, [chunk_id]).get(chunk_id, 0.0)

    def _search(self, query: str, *, author: str | None, category: str | None = None, top_k: int,
                strategy: str | None = None, vector: Sequence[float] | None = None,
                self_query: bool | None = None, rerank: bool | None = None):
        """-> (results, dense hits, keyword hits, the text searched, its vector or None)."""
        """``vector``: the query's embedding when the caller already has it (the Serve deployment
        gets it from the embedding service); otherwise the embedder passed in computes it.
        ``self_query`` (default: on when no author is given) reads an author named in the
        question as a filter; ``rerank`` (default: on when the retriever has a reranker) reorders
        the fused candidates with it. Both apply to the fused strategies only."""
        strategy = strategy or self.strategy
        query, slug = self.validate(query, author, category, top_k, strategy)
        fused = strategy in ("hybrid", "rrf")
        if fused and slug is None and (self_query if self_query is not None else True):
            plan = understand(query, ((s, t["name"]) for s, t in self._authors().items()))
            if plan.author or plan.category:
                slug, category = plan.author or slug, category or plan.category
                if plan.query != query:
                    query, vector = plan.query, None
        elif fused and slug is not None and (self_query if self_query is not None else True):
            # Asked of the twin by name ("According to Paul, ..." to Paul's twin): the name and
            # its "according to" are not what to search for (nor what the passages must mention).
            stripped = self._without_twin_name(query, slug)
            if stripped != query:
                query, vector = stripped, None
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
            return (self._per_document([(h.fields, h.score) for h in dense], top_k, similarity), dense, keyword, query,
                    vector)
        if strategy == "keyword":
            return (self._per_document([(h.fields, h.score) for h in keyword], top_k, similarity), dense, keyword,
                    query, vector)

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
            ranked = self._per_document([(fields[c], s) for c, s in chunk_score.items()], self.rerank_depth, similarity)
        else:
            best_chunk: dict[str, str] = {}
            for chunk, _score in sorted(chunk_score.items(), key=lambda item: (-item[1], item[0])):
                best_chunk.setdefault(fields[chunk]["doc_id"], chunk)
            # Ties (rank 1 + rank 3 against rank 3 + rank 1) go to the better dense rank: the
            # embedder reads the question as a whole, BM25 only its words.
            dense_rank = {}
            for hit in dense:
                dense_rank.setdefault(hit.fields["doc_id"], len(dense_rank))
            order = sorted(doc_score, key=lambda d: (-doc_score[d], dense_rank.get(d, len(dense_rank)), d))
            ranked = [Result.from_hit(fields[best_chunk[d]], doc_score[d], similarity.get(d, 0.0))
                      for d in order[:self.rerank_depth]]
        if self.reranker is not None and (rerank if rerank is not None else True):
            ranked = self._rerank(query, vector, ranked, chunk_score, fields)
        return ranked[:top_k], dense, keyword, query, vector

    def search_expanded(self, queries: Sequence[str], *, top_k: int = 5, **options) -> list[Result]:
        """Several phrasings of one question, each searched, the document rankings fused by
        reciprocal rank (query expansion; see query.expansions). A phrasing that fails validation
        (empty, too long) is skipped; the first one is the question itself and must pass."""
        ranked = [self.search(queries[0], top_k=max(top_k, 10), **options)]
        for query in queries[1:]:
            try:
                ranked.append(self.search(query, top_k=max(top_k, 10), **options))
            except InvalidQuery:
                continue
        score: dict[str, float] = defaultdict(float)
        first: dict[str, Result] = {}
        for results in ranked:
            for rank, r in enumerate(results, start=1):
                score[r.doc_id] += 1.0 / (RRF_K + rank)
                first.setdefault(r.doc_id, r)
        order = sorted(score, key=lambda d: -score[d])[:top_k]
        return [first[d] for d in order]

    def _rerank(self, query: str, vector, ranked: list[Result], chunk_score: dict[str, float],
                fields: dict[str, dict]) -> list[Result]:
        """Each candidate document scores as its best candidate chunk (up to ``rerank_chunks``
        per document) by the reranker; that ranking is fused with the first stage's by reciprocal rank."""
        candidates: dict[str, list[str]] = defaultdict(list)
        for chunk, _ in sorted(chunk_score.items(), key=lambda item: (-item[1], item[0])):
            doc = fields[chunk]["doc_id"]
            if len(candidates[doc]) < self.rerank_chunks:
                candidates[doc].append(chunk)
        chunks = [c for r in ranked for c in candidates.get(r.doc_id, [r.chunk_id])]
        scores = dict(zip(chunks, self.reranker.scores(query, [fields[c]["text"] for c in chunks], vector),
                      strict=True))
        best = {r.doc_id: max(candidates.get(r.doc_id, [r.chunk_id]), key=lambda c: scores[c]) for r in ranked}
        by_rerank = sorted(ranked, key=lambda r: -scores[best[r.doc_id]])
        rerank_rank = {r.doc_id: n for n, r in enumerate(by_rerank, start=1)}
        fused = {r.doc_id: self.first_stage_weight / (RRF_K + n) + 1.0 / (RRF_K + rerank_rank[r.doc_id])
                 for n, r in enumerate(ranked, start=1)}
        order = sorted(ranked, key=lambda r: (-fused[r.doc_id], rerank_rank[r.doc_id]))
        return [Result.from_hit(fields[best[r.doc_id]], fused[r.doc_id], r.similarity) for r in order]

    def _authors(self) -> dict[str, dict]:
        """Who is in the index, for self-query; read once a minute at most (it changes when the
        index does, and a search should not scan the store)."""
        now = time.monotonic()
        if self._authors_cache is None or now - self._authors_cache[0] > 60:
            self._authors_cache = (now, self.store.twins())
        return self._authors_cache[1]

    @staticmethod
    def _per_document(scored: list[tuple[dict, float]], top_k: int, similarity: dict[str, float]) -> list[Result]:
        """Best chunk per document, highest first; ties broken by chunk id for determinism."""
        best: dict[str, tuple[dict, float]] = {}
        for f, score in sorted(scored, key=lambda item: (-item[1], item[0]["id"])):
            best.setdefault(f["doc_id"], (f, score))
        return [Result.from_hit(f, s, similarity.get(f["doc_id"], 0.0)) for f, s in list(best.values())[:top_k]]
