"""Score main-text extraction on the article-extraction benchmark (scrapinghub's metric).

Both texts are split into ``\\w+`` tokens and into 4-token shingles; per page, true positives,
false positives and false negatives between the shingle multisets are normalised to sum to 1;
precision and recall are averaged over pages and F1 = 2PR/(P+R).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_TOKEN = re.compile(r"\w+", re.UNICODE)


def shingles(text: str, n: int = 4) -> Counter:
    tokens = _TOKEN.findall(text)
    return Counter(tuple(tokens[i:i + n]) for i in range(max(0, len(tokens) - n + 1)))


def page_counts(predicted: str, truth: str) -> tuple[float, float, float]:
    """(tp, fp, fn) for one page, normalised to sum to 1 (all zero when both are empty)."""
    pred, gold = shingles(predicted), shingles(truth)
    tp = sum((pred & gold).values())
    fp = sum((pred - gold).values())
    fn = sum((gold - pred).values())
    total = tp + fp + fn
    return (tp / total, fp / total, fn / total) if total else (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ExtractionScore:
    precision: float
    recall: float
    f1: float
    pages: int
    failures: int

    def as_dict(self) -> dict:
        return {"f1": round(self.f1, 4), "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "pages": self.pages, "failures": self.failures}


def score(pairs: Iterable[tuple[str, str]]) -> tuple[float, float, float, int]:
    precisions, recalls = [], []
    for predicted, truth in pairs:
        tp, fp, fn = page_counts(predicted, truth)
        # The benchmark's convention: a page with nothing predicted has precision 0, not 0/0.
        precisions.append(tp / (tp + fp) if tp + fp else 0.0)
        recalls.append(tp / (tp + fn) if tp + fn else 0.0)
    n = len(precisions)
    p = sum(precisions) / n if n else 0.0
    r = sum(recalls) / n if n else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f1, n


def run_benchmark(root: Path, extract: Callable[[bytes], str],
                  progress: Callable[[Iterable], Iterable] = lambda it: it) -> ExtractionScore:
    """Run ``extract`` (page bytes -> text; an exception counts as empty text) on every page."""
    import gzip

    truth = json.loads((root / "ground-truth.json").read_text())
    pairs, failures = [], 0
    for key in progress(sorted(truth)):
        page = root / "html" / f"{key}.html.gz"
        try:
            predicted = extract(gzip.decompress(page.read_bytes()))
        except Exception:  # noqa: BLE001 - a failed page scores as empty, as in the benchmark
            predicted, failures = "", failures + 1
        pairs.append((predicted, truth[key].get("articleBody") or ""))
    p, r, f1, n = score(pairs)
    return ExtractionScore(p, r, f1, n, failures)
