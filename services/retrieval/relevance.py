"""Has the twin written about this? A calibrated decision over what retrieval already found.

One cosine cut on the best chunk (the old rule) let shared words carry off-topic questions over
it ("train" for a marathon plan, "tune" for a guitar) while refusing paraphrases with no shared
wording. The decision here reads seven signals of one search, six computed from its candidate
pools at no extra model call, one from one embedder call (the question without each of its words):

- ``similarity``: best dense cosine among the top results;
- ``dense_margin``: how far the best dense chunk stands above the fifth (a topic the twin covers
  has a few chunks well above the rest; an off-topic one a flat tail);
- ``coverage_top`` / ``coverage_pool``: the share of the question's own content words found in
  the top passages / anywhere in the candidate pools ("marathon" is nowhere in an ML author's
  writing);
- ``keyword_idf_share``: the best BM25 score per query term, as a share of the IDF of a term
  found in one chunk of the index (BM25 scores grow with the log of the index's size: per term
  ~3.3 for an answerable question over 1,800 chunks, ~2.1 over 20; the share reads the same on
  both, so one calibration fits a 20-post blog and a large archive);
- ``agreement``: the dense and BM25 halves put the same document first;
- ``coverage_weighted``: ``coverage_top`` with each word weighted by how much it matters to the
  question's meaning: how far the question's embedding moves when the word is left out
  (``word_variants`` / ``word_importance``: one embedder call of the question and its variants).
  "How does METIS graph partitioning speed up GNN training?" shares "graph", "speed", "GNN" and
  "training" with a post on GraphSAGE, but "METIS" weighs most (0.15 against 0.03 for "training");
  in "Jonas from Berlin here: what does the temperature do when sampling tokens?" the asker's name
  weighs 0.02, "temperature" 0.26. Without an embedder (keyword search) it is ``coverage_top``.

A logistic model over them gives the probability that the twin's writing answers the question;
it is fitted per embedding model (similarities differ by model) on labelled answerable and
unanswerable questions (`twin eval relevance --calibrate`; the shipped calibration,
``relevance_calibration.json``, was fitted on tests/data's development sets and is reported on
the held-out ones in docs/evaluation.md). No Milvus, model or transport here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .keywords import STOP_WORDS, WORD, keyword_terms, stem, topic_terms

SHIPPED = Path(__file__).with_name("relevance_calibration.json")
TOP_RESULTS = 4   # results whose similarity counts
TOP_PASSAGES = 3  # passages whose words count as covering the question
MARGIN_RANK = 4   # the dense hit (0-based) the best one is compared with
MAX_WEIGHED_TERMS = 24  # words weighed one by one (an embedder call of this many variants); the rest: their mean
# Longer questions are not weighed (plain coverage): the embedder reads ~256 word pieces, so words past
# them would weigh nothing, and 25 embeddings of a long text would multiply what one question costs.
MAX_WEIGHED_WORDS = 150


@dataclass(frozen=True)
class Evidence:
    similarity: float
    dense_margin: float
    coverage_top: float
    coverage_pool: float
    keyword_idf_share: float
    agreement: float
    coverage_weighted: float = 0.0

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def vector(self) -> list[float]:
        return [float(getattr(self, name)) for name in self.names()]


def _covered(terms: set[str], seen: set[str], weight: Mapping[str, float] | None = None) -> float:
    """The share of ``terms`` in ``seen`` (the passages' keyword terms), each term counting its
    ``weight`` (a term it lacks weighs the mean of the others; None, or all zero: every term alike)."""
    if not terms:
        return 0.0
    if weight:
        mean = sum(weight.values()) / len(weight)
        w = {t: weight.get(t, mean) for t in terms}
        total = sum(w.values())
        if total > 1e-9:
            return sum(w[t] for t in terms & seen) / total
    return len(terms & seen) / len(terms)


def word_variants(question: str) -> tuple[list[str], list[str]]:
    """-> (terms, texts): the question's topic terms (at most MAX_WEIGHED_TERMS, in order) and the
    texts to embed for ``word_importance``: the question itself, then the question without the
    words of each term (every word with that stem). No terms for a question of more than
    MAX_WEIGHED_WORDS words."""
    terms = list(dict.fromkeys(topic_terms(question)))[:MAX_WEIGHED_TERMS]
    words = [(m.start(), m.end(), m.group(0).lower()) for m in WORD.finditer(question)]
    if len(words) > MAX_WEIGHED_WORDS:
        return [], [question]
    texts = [question]
    for term in terms:
        left, at = [], 0
        for start, end, word in words:
            if word not in STOP_WORDS and stem(word) == term:
                left.append(question[at:start])
                at = end
        left.append(question[at:])
        texts.append(re.sub(r"\s+", " ", "".join(left)).strip() or question)
    return terms, texts


def word_importance(terms: Sequence[str], vectors: Sequence[Sequence[float]]) -> dict[str, float]:
    """How much each term matters to the question: 1 - cosine between the question's embedding
    (``vectors[0]``) and its embedding without the term (``vectors[1:]``, ``word_variants``' order)."""
    import numpy as np

    v = np.asarray(vectors, dtype=np.float64)
    if len(v) != len(terms) + 1:
        raise ValueError(f"word_importance: {len(terms)} terms need {len(terms) + 1} vectors, got {len(v)}")
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return {t: max(0.0, 1.0 - float(v[i + 1] @ v[0])) for i, t in enumerate(terms)}


def unique_term_idf(chunks: int) -> float:
    """BM25's IDF (Milvus' form, log(1 + (N - n + 0.5) / (n + 0.5))) of a term found in one of
    ``chunks`` chunks: the most one query term can weigh in an index of that size."""
    return math.log(1 + (max(1, chunks) - 0.5) / 1.5)


def gather(question: str, query: str, results: Sequence, dense: Sequence, keyword: Sequence,
           chunks: int, importance: Mapping[str, float] | None = None) -> Evidence:
    """``question``: the user's own words (coverage is of these, so that a follow-up searched with
    the question before it still has to be about something the passages mention); ``query``: the
    text searched; ``results``: the ranked Results; ``dense`` / ``keyword``: each half's hits;
    ``chunks``: how many chunks the index holds (BM25's IDF is over all of them); ``importance``:
    ``word_importance`` of the question's terms (a term past MAX_WEIGHED_TERMS weighs their mean;
    None: every term alike)."""
    terms = set(topic_terms(question))  # without a frame such as "what's your take on"
    similarity = max((r.similarity for r in results[:TOP_RESULTS]), default=0.0)
    margin = float(dense[0].score - dense[MARGIN_RANK].score) if len(dense) > MARGIN_RANK else 0.0
    top = [f"{r.title} {r.text}" for r in results[:TOP_PASSAGES]]
    pool = [f"{h.fields['text']} {h.fields['title']}" for h in (*dense, *keyword)]
    per_term = float(keyword[0].score) / max(1, len(keyword_terms(query))) if keyword else 0.0
    idf_share = per_term / unique_term_idf(chunks)
    agree = float(bool(dense and keyword and dense[0].fields["doc_id"] == keyword[0].fields["doc_id"]))
    seen_top = set(keyword_terms(" ".join(top)))
    pool_seen = set(keyword_terms(" ".join(pool)))
    return Evidence(similarity, margin, _covered(terms, seen_top), _covered(terms, pool_seen), idf_share, agree,
                    _covered(terms, seen_top, importance))


@dataclass(frozen=True)
class RelevanceModel:
    """Logistic regression over standardised Evidence; ``probability`` >= the threshold answers.
    ``features``: the Evidence fields it reads, in its weights' order (a calibration fitted before
    a signal was added keeps reading the ones it was fitted on)."""

    embedding_model: str
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    fitted_on: str = ""
    features: tuple[str, ...] = tuple(Evidence.names())

    def probability(self, evidence: Evidence) -> float:
        x = [float(getattr(evidence, name)) for name in self.features]
        z = self.bias + sum(w * (v - m) / s for w, v, m, s in zip(self.weights, x, self.mean, self.scale, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    @classmethod
    def fit(cls, evidence: Sequence[Evidence], answerable: Sequence[bool], embedding_model: str, *,
            l2: float = 0.1, fitted_on: str = "", features: Sequence[str] | None = None) -> RelevanceModel:
        """Newton's method on the class-balanced, L2-penalised log loss (both classes weigh the
        same whatever their counts, so 0.5 is the balanced point)."""
        import numpy as np

        if len(set(answerable)) < 2:
            raise ValueError("calibration needs both answerable and unanswerable questions")
        features = tuple(features or Evidence.names())
        x = np.array([[float(getattr(e, name)) for name in features] for e in evidence], dtype=np.float64)
        y = np.array(answerable, dtype=np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale < 1e-9] = 1.0
        z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
        sample = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum())))
        beta = np.zeros(z.shape[1])
        penalty = np.full(z.shape[1], l2)
        penalty[-1] = 0.0  # the bias is not shrunk
        for _ in range(50):
            p = 1 / (1 + np.exp(-(z @ beta)))
            gradient = z.T @ (sample * (p - y)) + penalty * beta
            hessian = (z * (sample * p * (1 - p))[:, None]).T @ z + np.diag(penalty)
            step = np.linalg.solve(hessian, gradient)
            beta -= step
            if np.abs(step).max() < 1e-8:
                break
        return cls(embedding_model, tuple(mean.tolist()), tuple(scale.tolist()), tuple(beta[:-1].tolist()),
                   float(beta[-1]), fitted_on, features)

    def to_dict(self) -> dict:
        return {**asdict(self), "features": list(self.features)}

    @classmethod
    def from_dict(cls, data: dict) -> RelevanceModel:
        features = data.get("features")
        known = Evidence.names()
        sizes = {len(data.get(key) or ()) for key in ("mean", "scale", "weights")}
        if (not isinstance(features, list) or not features or any(f not in known for f in features)
                or sizes != {len(features)}):
            raise ValueError(f"the calibration was fitted on features {features} ({sorted(sizes)} weights); this "
                             f"version reads any of {known}: fit it again with `twin eval relevance --calibrate`")
        return cls(data["embedding_model"], tuple(data["mean"]), tuple(data["scale"]), tuple(data["weights"]),
                   float(data["bias"]), data.get("fitted_on", ""), tuple(features))


DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"  # what embedding.model unset means (the packaged model)
BESIDE_MODEL = "relevance.json"  # a calibration kept inside the embedding model's folder (an adapted embedder's)


def model_id(embedding_model: str | None) -> str:
    return embedding_model.rstrip("/") if embedding_model else DEFAULT_EMBEDDER


def calibration_path(data_dir: Path, embedding_model: str | None) -> Path:
    """Where `twin eval relevance --calibrate` writes a calibration of one's own (it wins over the shipped one)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id(embedding_model).strip("/"))[-120:]
    return Path(data_dir) / "relevance" / f"{slug}.json"


def load(embedding_model: str | None, data_dir: Path | None = None) -> RelevanceModel | None:
    """The calibration for this embedding model (``embedding.model``; None: the packaged one):
    one's own under the data dir first, then one inside the model's folder, then the shipped one;
    None when none covers the model (the caller falls back to a similarity cut)."""
    candidates = [calibration_path(data_dir, embedding_model)] if data_dir is not None else []
    if embedding_model:
        candidates.append(Path(embedding_model) / BESIDE_MODEL)
    for path in candidates:
        if path.is_file():
            return RelevanceModel.from_dict(json.loads(path.read_text(encoding="utf-8")))
    shipped = json.loads(SHIPPED.read_text(encoding="utf-8")) if SHIPPED.is_file() else {}
    for data in shipped.get("models", []):
        if data["embedding_model"] == model_id(embedding_model):
            return RelevanceModel.from_dict(data)
    return None
