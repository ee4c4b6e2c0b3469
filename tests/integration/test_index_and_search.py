"""Incremental indexing and hybrid search on real parts: Milvus Lite in a temp dir, the real MiniLM."""

from __future__ import annotations

import pytest

from llm_twin.documents import RawDocument
from llm_twin.features.chunk import Chunker
from llm_twin.warehouse import Warehouse
from services.retrieval.core import Retriever
from services.retrieval.errors import InvalidQuery, UnknownAuthor
from services.retrieval.indexer import Indexer
from services.retrieval.store import MilvusStore

ADA, BOB = "Ada Writer", "Bob Coder"
TEXTS = {
    "starter": "A sourdough starter is a culture of wild yeast kept alive with flour and water. " * 3,
    "hnsw": "HNSW builds a layered graph so that approximate nearest neighbour search is fast. " * 3,
    "operators": "Kubernetes operators reconcile custom resources towards their desired state. " * 3,
}


def doc(author: str, key: str, text: str | None = None, category: str = "article") -> RawDocument:
    return RawDocument.create(author=author, category=category, source=f"https://blog.test/{key}",
                              title=key.title(), text=text or TEXTS[key])


@pytest.fixture
def parts(tmp_path, embedder):
    warehouse = Warehouse(str(tmp_path / "wh"))
    store = MilvusStore(str(tmp_path / "milvus.db"), "chunks", embedder.dimension)
    indexer = Indexer(warehouse, store, embedder, Chunker(embedder.count_tokens, 60, 10))
    yield warehouse, store, indexer, Retriever(store, embedder)
    store.close()


def chunk_ids(store: MilvusStore) -> set[str]:
    rows = store.client.query(store.collection, filter="", output_fields=["id"], limit=10_000)
    return {r["id"] for r in rows}


def test_index_is_incremental(parts):
    warehouse, store, indexer, _ = parts
    for key in TEXTS:
        warehouse.put(doc(ADA, key))
    first = indexer.run()
    assert (first.indexed, first.unchanged) == (3, 0) and first.total_chunks == first.chunks_written >= 3
    before = chunk_ids(store)

    again = indexer.run()
    assert (again.indexed, again.unchanged, again.chunks_written) == (0, 3, 0)
    assert chunk_ids(store) == before

    warehouse.put(doc(ADA, "hnsw", "HNSW has a parameter ef that trades recall against latency at query time."))
    warehouse.delete(doc(ADA, "operators").id)
    changed = indexer.run()
    assert (changed.indexed, changed.unchanged, changed.removed) == (1, 1, 1)
    rows = store.client.query(store.collection, filter="", output_fields=["doc_id", "text"], limit=10_000)
    assert {r["doc_id"] for r in rows} == {doc(ADA, "starter").id, doc(ADA, "hnsw").id}
    assert not any("layered graph" in r["text"] for r in rows)  # the old version is gone


def test_an_interrupted_index_run_converges_with_no_duplicates(parts, embedder, monkeypatch):
    warehouse, store, indexer, _ = parts
    for key in TEXTS:
        warehouse.put(doc(ADA, key, TEXTS[key] * 4))
    monkeypatch.setattr("services.retrieval.indexer.INSERT_BATCH", 2)
    calls = {"n": 0}
    real_embed = embedder.embed

    def embed_then_die(texts, on_batch=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        return real_embed(texts, on_batch)

    monkeypatch.setattr(embedder, "embed", embed_then_die)
    with pytest.raises(KeyboardInterrupt):
        indexer.run()
    assert store.count() > 0  # something was written before the interruption
    monkeypatch.setattr(embedder, "embed", real_embed)

    resumed = indexer.run()
    ids_after_resume = chunk_ids(store)
    assert resumed.total_chunks == len(ids_after_resume)

    # A clean index of the same warehouse has exactly the same chunks.
    fresh = Indexer(warehouse, MilvusStore(store.uri, "fresh", embedder.dimension), embedder, indexer.chunker)
    assert fresh.run().total_chunks == resumed.total_chunks
    assert chunk_ids(fresh.store) == ids_after_resume


def test_duplicates_are_indexed_once(parts):
    warehouse, store, indexer, _ = parts
    text = "Streaming pipelines keep a vector database in sync with the source of truth. " * 5
    warehouse.put(RawDocument.create(author=ADA, category="article", source="https://medium.test/a", title="A",
                                     text=text))
    warehouse.put(RawDocument.create(author=ADA, category="article", source="https://substack.test/a", title="A",
                                     text=text + "\nSubscribe\nShare this post"))
    report = indexer.run()
    assert (report.documents, report.duplicates) == (1, 1)
    assert len({r["doc_id"] for r in store.client.query(store.collection, filter="", output_fields=["doc_id"],
                                                        limit=100)}) == 1


def test_hybrid_search_with_filters_and_bad_input(parts):
    warehouse, _, indexer, retriever = parts
    for key in TEXTS:
        warehouse.put(doc(ADA, key))
    warehouse.put(doc(BOB, "retry", "def retry(fn, times=3):\n    for _ in range(times):\n        return fn()\n",
                      "code"))
    indexer.run()

    top = retriever.search("how do I keep wild yeast alive?", top_k=3)
    assert top[0].title == "Starter" and top[0].author == ADA and top[0].link == "https://blog.test/starter"
    assert len({r.doc_id for r in top}) == len(top)  # one result per document

    bobs = retriever.search("yeast", author="bob-coder")
    assert bobs and all(r.author == BOB for r in bobs)  # the filter holds even for a query that fits Ada
    assert [r.category for r in retriever.search("retry a function", author=BOB, category="code")] == ["code"]
    assert retriever.search("yeast", author=ADA, category="post") == []
    for strategy in ("dense", "keyword", "rrf"):
        assert retriever.search("nearest neighbour graph", strategy=strategy)[0].title == "Hnsw"

    with pytest.raises(InvalidQuery, match="empty"):
        retriever.search("   ")
    with pytest.raises(UnknownAuthor, match="Nobody"):
        retriever.search("yeast", author="Nobody")
    with pytest.raises(InvalidQuery, match="top_k"):
        retriever.search("yeast", top_k=0)
    with pytest.raises(InvalidQuery, match="category"):
        retriever.search("yeast", category="tweet")


def test_answer_search_reads_the_users_own_words_not_the_twins_name(parts):
    """Asked of Ada's twin "According to Ada, ...": her name is neither searched for nor counted as
    a word the passages must cover. A follow-up searched with the topic in front reports how near
    its own words are to the passage found (the chat's retry check); the BM25 signal is a share of
    this index's unique-term IDF."""
    warehouse, store, indexer, retriever = parts
    for key in TEXTS:
        warehouse.put(doc(ADA, key))
    indexer.run()
    named = retriever.answer_search("According to Ada, how is a sourdough starter kept alive?", author=ADA)
    plain = retriever.answer_search("How is a sourdough starter kept alive?", author=ADA)
    assert named.results[0].title == "Starter" and named.evidence == plain.evidence
    assert named.question_similarity is None  # the question itself was searched
    assert 0 < plain.evidence.keyword_idf_share < 5

    topic = "How do Kubernetes operators reconcile resources?"
    on_topic = retriever.answer_search(f"{topic} What is the desired state?", "What is the desired state?",
                                       author=ADA)
    off_topic = retriever.answer_search(f"{topic} Which football team wins the cup?",
                                        "Which football team wins the cup?", author=ADA)
    assert on_topic.results[0].title == off_topic.results[0].title == "Operators"  # the topic finds its post
    assert on_topic.question_similarity > off_topic.question_similarity + 0.15
    own = retriever.embedder.embed(["Which football team wins the cup?"])[0]
    assert off_topic.question_similarity == pytest.approx(
        store.similarity(own, [off_topic.results[0].chunk_id])[off_topic.results[0].chunk_id])


def test_another_twins_lead_is_measured_only_when_someone_else_is_indexed(parts):
    """Ada wrote on sourdough and HNSW, Bob on Kubernetes operators. Asked of Ada, a question on
    operators finds Bob's post far closer than anything of hers (the lead the chat declines on); a
    question on her own topic has none; with Ada alone in the index there is no lead to measure."""
    warehouse, store, indexer, retriever = parts
    warehouse.put(doc(ADA, "starter"))
    warehouse.put(doc(ADA, "hnsw"))
    indexer.run()
    alone = retriever.answer_search("How do Kubernetes operators reconcile custom resources?", author=ADA)
    assert alone.other_twin_lead is None

    warehouse.put(doc(BOB, "operators"))
    indexer.run()
    retriever = Retriever(store, retriever.embedder)  # a fresh one: the author list is read once a minute
    elsewhere = retriever.answer_search("How do Kubernetes operators reconcile custom resources?", author=ADA)
    own = retriever.answer_search("How is a sourdough starter kept alive?", author=ADA)
    asked_of_bob = retriever.answer_search("How do Kubernetes operators reconcile custom resources?", author=BOB)
    assert elsewhere.other_twin_lead > 0.3
    assert own.other_twin_lead < 0
    assert asked_of_bob.other_twin_lead < 0
    vector = retriever.embedder.embed(["How do Kubernetes operators reconcile custom resources?"])[0]
    bobs_best = store.dense_search(vector, 1, "bob-coder")[0].score
    adas_best = store.dense_search(vector, 1, "ada-writer")[0].score
    assert elsewhere.other_twin_lead == pytest.approx(bobs_best - adas_best, abs=1e-5)
