"""The answer-or-decline decision's parts: the evidence read from one search, the calibrated
model (fit, save, load order), and the labelled files and error rates it is measured with."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import pytest

from llm_twin.evaluation.relevance import error_rates, load_labelled
from llm_twin.evaluation.retrieval import QuestionFileError
from services.retrieval import relevance
from services.retrieval.core import Result
from services.retrieval.relevance import Evidence, RelevanceModel, gather


@dataclass
class Hit:
    score: float
    fields: dict


def hit(doc: str, score: float, text: str) -> Hit:
    return Hit(score, {"doc_id": doc, "text": text, "title": f"Post {doc}"})


def result(doc: str, similarity: float, text: str) -> Result:
    return Result(chunk_id=doc, doc_id=doc, score=0.0, text=text, title=f"Post {doc}", link="", author="A",
                  category="article", chunk_no=0, similarity=similarity)


def test_evidence_counts_the_users_own_words_in_the_passages():
    dense = [hit("a", 0.61, "chunk overlap keeps context"), *[hit(f"d{i}", 0.30, "filler") for i in range(5)]]
    keyword = [hit("a", 7.5, "chunk overlap keeps context"), hit("k", 3.0, "marathon? no")]
    results = [result("a", 0.61, "chunk overlap keeps context"), result("d0", 0.30, "filler")]
    e = gather("Why keep the overlap small?", "cut documents into chunks Why keep the overlap small?",
               results, dense, keyword, chunks=20)
    assert e.similarity == pytest.approx(0.61) and e.dense_margin == pytest.approx(0.31)
    assert e.coverage_top == pytest.approx(2 / 3)  # keep, overlap of keep/overlap/small
    # per term of the text searched, as a share of the IDF of a term in 1 of the index's 20 chunks
    assert e.agreement == 1.0 and e.keyword_idf_share == pytest.approx(7.5 / 6 / math.log(1 + 19.5 / 1.5))
    assert gather("marathon plan", "marathon plan", [], [], [], chunks=0).vector() == [0.0] * 7


@pytest.mark.parametrize("framed", [
    "What's your take on chunk overlap?", "Have you ever written anything about chunk overlap?",
    "I'd love to hear your view on chunk overlap.", "What do you think about chunk overlap?",
])
def test_a_question_put_to_the_twin_is_judged_by_its_topic_not_its_frame(framed):
    """'take', 'written', 'view', 'think' are in no passage: counted, they read as a topic the
    writing does not cover, and "What's your view on ...?" was declined where "... ?" was answered."""
    texts = ["chunk overlap keeps context"]
    results = [result("a", 0.6, texts[0])]
    plain = gather("chunk overlap?", "chunk overlap?", results, [hit("a", 0.6, texts[0])], [], chunks=20)
    e = gather(framed, framed, results, [hit("a", 0.6, texts[0])], [], chunks=20)
    assert e.coverage_top == plain.coverage_top == 1.0 and e.coverage_pool == 1.0
    # not addressed to the twin, the same words are the topic and count
    assert gather("How do I take a view of chunk overlap?", "", results, [], [], chunks=20).coverage_top == 0.5


def test_the_keyword_signal_reads_the_same_in_a_small_and_a_large_index():
    """BM25 scores grow with the log of the index's size (IDF): the same match weighs ~2.7x more
    over 1,800 chunks than over 20. The share of a unique term's IDF does not."""
    for chunks in (1, 20, 1800, 10**6):
        idf = relevance.unique_term_idf(chunks)
        # a query of one word found in one chunk, at BM25's term-frequency saturation (k1 + 1 = 2.2)
        kw = [hit("a", idf * 2.2, "rare")]
        e = gather("rare", "rare", [result("a", 0.5, "rare")], [], kw, chunks=chunks)
        assert e.keyword_idf_share == pytest.approx(2.2)
    assert relevance.unique_term_idf(1800) / relevance.unique_term_idf(20) == pytest.approx(2.68, abs=0.01)


def synthetic(n: int, seed: int = 0) -> tuple[list[Evidence], list[bool]]:
    rng = random.Random(seed)
    rows, labels = [], []
    for i in range(n):
        yes = i % 3 != 0
        base = 0.55 if yes else 0.30
        rows.append(Evidence(base + rng.gauss(0, 0.06), rng.random() * 0.1, rng.random(), 0.9 if yes else 0.6,
                             rng.random() * 4, float(rng.random() < 0.5)))
        labels.append(yes)
    return rows, labels


def test_a_fitted_model_separates_what_it_was_fitted_to_separate_and_round_trips():
    train, labels = synthetic(300)
    model = RelevanceModel.fit(train, labels, "tiny-embedder")
    test, truth = synthetic(200, seed=1)
    accuracy = sum((model.probability(e) >= 0.5) == y for e, y in zip(test, truth, strict=True)) / len(test)
    assert accuracy > 0.9
    assert RelevanceModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    with pytest.raises(ValueError, match="both answerable and unanswerable"):
        RelevanceModel.fit(train[:5], [True] * 5, "tiny-embedder")
    for stale in ({**model.to_dict(), "features": ["similarity"]},  # 1 name, 7 weights
                  {**model.to_dict(), "features": [*Evidence.names()[:-1], "a signal this version lacks"]}):
        with pytest.raises(ValueError, match="twin eval relevance --calibrate"):
            RelevanceModel.from_dict(stale)


def test_a_calibration_fitted_before_a_signal_was_added_reads_the_signals_it_was_fitted_on():
    """A user's own calibration (`twin eval relevance --calibrate`) of the six first signals keeps
    deciding as it did: it is not refused, and the seventh signal does not move it."""
    train, labels = synthetic(300)
    six = Evidence.names()[:6]
    old = RelevanceModel.fit(train, labels, "tiny-embedder", features=six)
    loaded = RelevanceModel.from_dict({**old.to_dict(), "features": six})
    e = train[0]
    moved = Evidence(*e.vector()[:6], coverage_weighted=1.0 - e.coverage_weighted)
    assert loaded.probability(e) == loaded.probability(moved) == old.probability(e)


def test_words_that_carry_the_question_weigh_more_in_its_coverage():
    """Leaving a word out moves the question's embedding by how much the word carries its
    meaning: the weighted coverage counts a passage that misses the question's subject as far
    less covering than one that misses its asides, where the plain share counts words alike."""
    terms, texts = relevance.word_variants("At Acme we chunk tickets: how big should a chunk be?")
    assert terms == ["acm", "chunk", "ticket", "big"] and texts[0].startswith("At Acme")
    assert texts[2] == "At Acme we tickets: how big should a be?"  # every word of the stem leaves
    # vectors: the question, then without each term (unit vectors at known angles)
    angle = {"acm": 0.05, "chunk": 0.9, "ticket": 0.3, "big": 0.2}
    vectors = [[1.0, 0.0]] + [[math.cos(angle[t]), math.sin(angle[t])] for t in terms]
    importance = relevance.word_importance(terms, vectors)
    assert importance["chunk"] > importance["ticket"] > importance["big"] > importance["acm"] > 0
    with pytest.raises(ValueError, match="need 5 vectors"):
        relevance.word_importance(terms, vectors[:3])
    question = "At Acme we chunk tickets: how big should a chunk be?"
    about_chunks = [result("a", 0.5, "how big a chunk should be")]
    about_acme = [result("b", 0.5, "Acme tickets big")]
    on_chunks = gather(question, question, about_chunks, [], [], chunks=20, importance=importance)
    on_acme = gather(question, question, about_acme, [], [], chunks=20, importance=importance)
    # the plain share: the passage on Acme's tickets covers more of the question (3 words of 4)
    assert on_chunks.coverage_top == 0.5 and on_acme.coverage_top == 0.75
    assert on_chunks.coverage_weighted > 0.8 and on_acme.coverage_weighted < 0.2
    # a long question is not weighed (words past the embedder's ~256 word pieces would weigh nothing)
    long = "Some context about our team and its history. " * 20 + "How big should a chunk be?"
    assert relevance.word_variants(long) == ([], [long])
    # no importance (keyword search): the plain share
    assert gather(question, question, about_acme, [], [], chunks=20).coverage_weighted == 0.75


def test_calibrations_load_own_first_then_beside_the_model_then_shipped(tmp_path):
    shipped = relevance.load(None)
    assert shipped is not None and shipped.embedding_model == relevance.DEFAULT_EMBEDDER
    assert relevance.load(str(tmp_path / "unknown-model"), tmp_path) is None  # no calibration: similarity cut
    model_dir = tmp_path / "adapted"
    model_dir.mkdir()
    beside = RelevanceModel.fit(*synthetic(60), str(model_dir), fitted_on="beside")
    (model_dir / relevance.BESIDE_MODEL).write_text(json.dumps(beside.to_dict()))
    assert relevance.load(str(model_dir), tmp_path).fitted_on == "beside"
    own = RelevanceModel.fit(*synthetic(60, seed=3), str(model_dir), fitted_on="own")
    path = relevance.calibration_path(tmp_path, str(model_dir))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(own.to_dict()))
    assert relevance.load(str(model_dir), tmp_path).fitted_on == "own"


def test_labelled_files_and_error_rates_per_kind(tmp_path):
    f = tmp_path / "labelled.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"question": "How do I chunk?", "gold_links": ["https://a.test/1"], "kind": "paraphrase"},
        {"question": "Marathon plan?", "twin": "Mara Quill", "answerable": False, "kind": "off-topic"},
        {"question": "Guitar tuning?", "twin": "Mara Quill", "answerable": False, "kind": "off-topic"},
    ]))
    rows = load_labelled(f, {"https://a.test/1": "Mara Quill"}.get)
    assert [(r.twin, r.answerable, r.kind) for r in rows] == [
        ("Mara Quill", True, "answerable: paraphrase"), ("Mara Quill", False, "off-topic"),
        ("Mara Quill", False, "off-topic")]
    rates = error_rates(rows, [False, True, False])
    assert rates["false_refusal"] == 1.0 and rates["false_answer"] == 0.5
    assert rates["kinds"]["off-topic"] == {"n": 2, "errors": 1, "answerable": False, "rate": 0.5}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Who?", "gold_links": ["https://elsewhere.test/"]}))
    with pytest.raises(QuestionFileError, match="name the twin"):
        load_labelled(bad, {}.get)


def test_the_asking_lead_tells_an_opening_about_the_asker_from_one_that_holds_the_topic(embedder):
    """The same asking clause after an opening about who asks, and after one naming what it is about."""
    from services.retrieval.core import asking_lead, asking_texts
    from services.retrieval.query import asking_clause

    def lead(question: str) -> float:
        opening, ask = asking_clause(question)
        return asking_lead(*embedder.embed([ask, *asking_texts(opening, ask)]))

    context = lead("Our insurance firm in Lisbon has 400 employees and a tiny IT team; how do we quantize a model to "
                   "4 bits?")
    topic = lead("We train a U-Net to segment tumours in MRI scans; how do we quantize it to 4 bits?")
    assert context > -0.15 > topic  # either side of retrieval.min_asking_lead's default
    assert -1 <= topic < context <= 1
