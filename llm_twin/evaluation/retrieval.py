"""Retrieval evaluation: hit@1, hit@5 and MRR@10 at document level over a question file.

Each line of the file: {"question": str, "author": str | null, "gold_links": [url, ...]}.
A document's rank is its best chunk's (the retriever returns one result per document).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


class QuestionFileError(ValueError):
    pass


@dataclass(frozen=True)
class Question:
    question: str
    author: str | None
    gold_links: tuple[str, ...]


def load_questions(path: Path) -> list[Question]:
    if not path.is_file():
        raise QuestionFileError(f"{path}: no such file")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuestionFileError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("question"), str) or not record["question"].strip():
            raise QuestionFileError(f"{path}:{number}: needs a non-empty \"question\" string")
        gold = record.get("gold_links")
        if not isinstance(gold, list) or not gold or not all(isinstance(g, str) for g in gold):
            raise QuestionFileError(f"{path}:{number}: needs \"gold_links\": a non-empty list of URLs")
        author = record.get("author")
        if author is not None and not isinstance(author, str):
            raise QuestionFileError(f"{path}:{number}: \"author\" must be a string or null")
        questions.append(Question(record["question"], author or None, tuple(gold)))
    if not questions:
        raise QuestionFileError(f"{path}: no questions in the file")
    return questions


def rank_of_first_gold(links: list[str], gold: Iterable[str]) -> int | None:
    gold_set = set(gold)
    for rank, link in enumerate(links, start=1):
        if link in gold_set:
            return rank
    return None


def evaluate(questions: list[Question], search: Callable[[Question], list[str]],
             progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict:
    """``search(question)`` returns the links of the top 10 documents, best first."""
    hit1 = hit5 = 0
    reciprocal = 0.0
    misses = []
    for q in progress(questions):
        rank = rank_of_first_gold(search(q)[:10], q.gold_links)
        if rank == 1:
            hit1 += 1
        if rank and rank <= 5:
            hit5 += 1
        if rank:
            reciprocal += 1.0 / rank
        else:
            misses.append(q.question)
    n = len(questions)
    return {"hit@1": round(hit1 / n, 4), "hit@5": round(hit5 / n, 4), "mrr@10": round(reciprocal / n, 4),
            "n": n, "misses": misses}
