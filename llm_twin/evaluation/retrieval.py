"""Retrieval evaluation: hit@1, hit@5 and MRR@10 at document level over a question file,
overall and per kind of question.

Each line of the file: {"question": str, "author": str | null, "gold_links": [url, ...],
"kind": str (optional: paraphrase, deep, author, follow-up, ...), "conversation": [{"role",
"content"}, ...] (optional: the turns before a follow-up question)}. A document's rank is its
best chunk's (the retriever returns one result per document).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


class QuestionFileError(ValueError):
    pass


@dataclass(frozen=True)
class Question:
    question: str
    author: str | None
    gold_links: tuple[str, ...]
    kind: str = "question"
    conversation: tuple[dict, ...] = field(default=())

    @property
    def messages(self) -> list[dict]:
        """The whole chat, the question last: what the chat path retrieves with."""
        return [*self.conversation, {"role": "user", "content": self.question}]


def _conversation(value, where: str) -> tuple[dict, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
            for m in value):
        raise QuestionFileError(f"{where}: \"conversation\" must be a list of "
                                f"{{\"role\": user|assistant, \"content\": str}}")
    return tuple({"role": m["role"], "content": m["content"]} for m in value)


def records(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, record) for each line of a question file: an object with a non-empty "question"."""
    if not path.is_file():
        raise QuestionFileError(f"{path}: no such file")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuestionFileError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("question"),
                                                          str) or not record["question"].strip():
            raise QuestionFileError(f"{where}: needs a non-empty \"question\" string")
        yield where, record


def load_questions(path: Path) -> list[Question]:
    questions = []
    for where, record in records(path):
        gold = record.get("gold_links")
        if not isinstance(gold, list) or not gold or not all(isinstance(g, str) for g in gold):
            raise QuestionFileError(f"{where}: needs \"gold_links\": a non-empty list of URLs")
        author = record.get("author")
        if author is not None and not isinstance(author, str):
            raise QuestionFileError(f"{where}: \"author\" must be a string or null")
        kind = record.get("kind", "question")
        if not isinstance(kind, str) or not kind.strip():
            raise QuestionFileError(f"{where}: \"kind\" must be a non-empty string")
        questions.append(Question(record["question"], author or None, tuple(gold), kind,
                                  _conversation(record.get("conversation"), where)))
    if not questions:
        raise QuestionFileError(f"{path}: no questions in the file")
    return questions


def rank_of_first_gold(links: list[str], gold: Iterable[str]) -> int | None:
    gold_set = set(gold)
    for rank, link in enumerate(links, start=1):
        if link in gold_set:
            return rank
    return None


def _scores(ranks: list[int | None]) -> dict:
    n = len(ranks)
    return {"hit@1": round(sum(r == 1 for r in ranks) / n, 4),
            "hit@5": round(sum(bool(r and r <= 5) for r in ranks) / n, 4),
            "mrr@10": round(sum(1.0 / r for r in ranks if r) / n, 4), "n": n}


def evaluate(questions: list[Question], search: Callable[[Question], list[str]],
             progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict:
    """``search(question)`` returns the links of the top 10 documents, best first.

    -> {"hit@1", "hit@5", "mrr@10", "n", "kinds": {kind: same figures}, "misses": [question, ...]}"""
    ranks: list[int | None] = []
    by_kind: dict[str, list[int | None]] = defaultdict(list)
    misses = []
    for q in progress(questions):
        rank = rank_of_first_gold(search(q)[:10], q.gold_links)
        ranks.append(rank)
        by_kind[q.kind].append(rank)
        if not rank:
            misses.append(q.question)
    return {**_scores(ranks), "kinds": {kind: _scores(r) for kind, r in sorted(by_kind.items())}, "misses": misses}
