"""Has the twin written about this? A calibrated decision over what retrieval already found.

One cosine cut on the best chunk (the old rule) let shared words carry off-topic questions over
it ("train" for a marathon plan, "tune" for a guitar) while refusing paraphrases with no shared
wording. The decision here reads six signals of one search, all computed from its candidate
pools at no extra model call:

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
- ``agreement``: the dense and BM25 halves put the same document first.

A logistic model over them gives the probability that the twin's writing answers the question;
it is fitted per embedding model (similarities differ by model) on labelled answerable and
unanswerable questions (`twin eval relevance --calibrate`; the shipped calibration,
``relevance_calibration.json``, was fitted on tests/data's development sets and is reported on
the held-out ones in docs/evaluation.md). No Milvus, model or transport here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .keywords import keyword_terms, topic_terms

SHIPPED = Path(__file__).with_name("relevance_calibration.json")
TOP_RESULTS = 4   # results whose similarity counts
TOP_PASSAGES = 3  # passages whose words count as covering the question
MARGIN_RANK = 4   # the dense hit (0-based) the best one is compared with


@dataclass(frozen=True)
class Evidence:
    similarity: float
    dense_margin: float
    coverage_top: float
    coverage_pool: float
    keyword_idf_share: float
    agreement: float

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def vector(self) -> list[float]:
        return [float(getattr(self, name)) for name in self.names()]


def _covered(terms: set[str], texts: Iterable[str]) -> float:
    if not terms:
        return 0.0
    seen = set(keyword_terms(" ".join(texts)))
    return len(terms & seen) / len(terms)


def unique_term_idf(chunks: int) -> float:
    """BM25's IDF (Milvus' form, log(1 + (N - n + 0.5) / (n + 0.5))) of a term found in one of
    ``chunks`` chunks: the most one query term can weigh in an index of that size."""
    return math.log(1 + (max(1, chunks) - 0.5) / 1.5)


def gather(question: str, query: str, results: Sequence, dense: Sequence, keyword: Sequence,
           chunks: int) -> Evidence:
    """``question``: the user's own words (coverage is of these, so that a follow-up searched with
    the question before it still has to be about something the passages mention); ``query``: the
    text searched; ``results``: the ranked Results; ``dense`` / ``keyword``: each half's hits;
    ``chunks``: how many chunks the index holds (BM25's IDF is over all of them)."""
    terms = set(topic_terms(question))  # without a frame such as "what's your take on"
    similarity = max((r.similarity for r in results[:TOP_RESULTS]), default=0.0)
    margin = float(dense[0].score - dense[MARGIN_RANK].score) if len(dense) > MARGIN_RANK else 0.0
    top = [f"{r.title} {r.text}" for r in results[:TOP_PASSAGES]]
    pool = [f"{h.fields['text']} {h.fields['title']}" for h in (*dense, *keyword)]
    per_term = float(keyword[0].score) / max(1, len(keyword_terms(query))) if keyword else 0.0
    idf_share = per_term / unique_term_idf(chunks)
    agree = float(bool(dense and keyword and dense[0].fields["doc_id"] == keyword[0].fields["doc_id"]))
    return Evidence(similarity, margin, _covered(terms, top), _covered(terms, pool), idf_share, agree)


@dataclass(frozen=True)
class RelevanceModel:
    """Logistic regression over standardised Evidence; ``probability`` >= the threshold answers."""

    embedding_model: str
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    fitted_on: str = ""

    def probability(self, evidence: Evidence) -> float:
        z = self.bias + sum(w * (x - m) / s for w, x, m, s in
                            zip(self.weights, evidence.vector(), self.mean, self.scale, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    @classmethod
    def fit(cls, evidence: Sequence[Evidence], answerable: Sequence[bool], embedding_model: str, *,
            l2: float = 0.1, fitted_on: str = "") -> RelevanceModel:
        """Newton's method on the class-balanced, L2-penalised log loss (both classes weigh the
        same whatever their counts, so 0.5 is the balanced point)."""
        import numpy as np

        if len(set(answerable)) < 2:
            raise ValueError("calibration needs both answerable and unanswerable questions")
        x = np.array([e.vector() for e in evidence], dtype=np.float64)
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
                   float(beta[-1]), fitted_on)

    def to_dict(self) -> dict:
        return {**asdict(self), "features": Evidence.names()}

    @classmethod
    def from_dict(cls, data: dict) -> RelevanceModel:
        if data.get("features") != Evidence.names():
            raise ValueError(f"the calibration was fitted on features {data.get('features')}, this version reads "
                             f"{Evidence.names()}: fit it again with `twin eval relevance --calibrate`")
        return cls(data["embedding_model"], tuple(data["mean"]), tuple(data["scale"]), tuple(data["weights"]),
                   float(data["bias"]), data.get("fitted_on", ""))


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
