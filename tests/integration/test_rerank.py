"""Second-stage rerankers: a cross-encoder from a local folder (a tiny random one stands in for a
real model, which does not ship here: the test checks loading, scoring and the reorder, not
quality) and the sentence-level late-interaction reranker with the real MiniLM."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.retrieval.core import Retriever
from services.retrieval.rerank import CrossEncoderReranker, SentenceReranker, sentence_pieces

TEXTS = {
    "a": "Chunking decides what retrieval can find. I cut prose by paragraph.",
    "b": "My sourdough starter taught me about operations. Feed it on a schedule.",
    "c": "Reciprocal rank fusion merges BM25 and dense rankings. It is hard to beat.",
}


@dataclass
class Hit:
    id: str
    score: float
    fields: dict


class Store:
    """Dense and keyword halves both rank a, b, c (in that order)."""

    def _hits(self):
        return [Hit(k, 1.0 - i / 10, {"id": k, "doc_id": f"d{k}", "text": t, "title": k, "link": f"https://x/{k}",
                                      "author_name": "Mara Quill", "category": "article", "chunk_no": 0})
                for i, (k, t) in enumerate(TEXTS.items())]

    def dense_search(self, vector, limit, author=None, category=None):
        return self._hits()

    def keyword_search(self, query, limit, author=None, category=None):
        return self._hits()

    def has_author(self, slug):
        return True

    def twins(self):
        return {"mara-quill": {"name": "Mara Quill"}}


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from services.embedding.core import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)  # random weights, spread wide enough that the three texts score apart
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=64, num_labels=1, initializer_range=0.5))
    folder = tmp_path_factory.mktemp("cross-encoder")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_local_cross_encoder_scores_and_reorders(tiny_cross_encoder, embedder):
    reranker = CrossEncoderReranker(str(tiny_cross_encoder))
    scores = reranker.scores("how do I fuse rankings?", list(TEXTS.values()))
    assert len(scores) == 3 and all(isinstance(x, float) for x in scores)
    retriever = Retriever(Store(), embedder, reranker=reranker)
    plain = [r.doc_id for r in retriever.search("how do I fuse rankings?", rerank=False)]
    reranked = retriever.search("how do I fuse rankings?")
    assert plain == ["da", "db", "dc"] and sorted(r.doc_id for r in reranked) == plain
    # Both rankings fused by reciprocal rank (ties to the reranker's order).
    rerank_rank = {f"d{k}": n for n, k in enumerate(sorted(TEXTS, key=lambda k: -scores[list(TEXTS).index(k)]), 1)}
    fused = {d: 1 / (60 + n) + 1 / (60 + rerank_rank[d]) for n, d in enumerate(plain, 1)}
    assert [r.doc_id for r in reranked] == sorted(plain, key=lambda d: (-fused[d], rerank_rank[d]))


def test_a_missing_cross_encoder_folder_names_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="TWIN_RERANKER_MODEL"):
        CrossEncoderReranker(str(tmp_path / "nothing-here"))


def test_the_sentence_reranker_finds_the_sentence_inside_a_chunk(embedder):
    assert sentence_pieces("One. Two sentences here that are long.") [-1].startswith("One.")
    scores = SentenceReranker(embedder).scores("Why feed a sourdough starter on a schedule?", list(TEXTS.values()))
    assert max(range(3), key=lambda i: scores[i]) == 1
    retriever = Retriever(Store(), embedder, reranker=SentenceReranker(embedder))
    assert retriever.search("Why feed a sourdough starter on a schedule?")[0].doc_id == "db"
