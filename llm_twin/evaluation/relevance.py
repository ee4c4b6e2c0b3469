"""Labelled relevance questions and the two error rates of the answer-or-decline decision.

A labelled file has one JSON object per line: {"question": str, "twin": author name,
"answerable": bool, "kind": str, "conversation": [...] (optional), "gold_links": [...]
(optional)}. A retrieval question file (llm_twin/evaluation/retrieval.py's format) reads as
answerable questions too, each asked to the twin of its first gold link (``author_of``), its
kind prefixed "answerable: ".

- false refusal rate: answerable questions the twin declined, per kind;
- false answer rate: unanswerable questions the twin answered in the author's name, per kind.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .retrieval import QuestionFileError, _conversation, records


@dataclass(frozen=True)
class LabelledQuestion:
    question: str
    twin: str
    answerable: bool
    kind: str
    conversation: tuple[dict, ...] = field(default=())

    @property
    def messages(self) -> list[dict]:
        return [*self.conversation, {"role": "user", "content": self.question}]


def load_labelled(path: Path, author_of: Callable[[str], str | None] | None = None) -> list[LabelledQuestion]:
    """``author_of(link)``: the twin a gold link belongs to, for rows that name none."""
    rows = []
    for where, record in records(path):
        answerable = record.get("answerable", True)
        if not isinstance(answerable, bool):
            raise QuestionFileError(f"{where}: \"answerable\" must be true or false")
        twin = record.get("twin") or record.get("author")
        gold = record.get("gold_links") or []
        if not twin and author_of is not None:
            twin = next((a for a in map(author_of, gold) if a), None)
        if not isinstance(twin, str) or not twin.strip():
            raise QuestionFileError(f"{where}: name the twin asked (\"twin\"), or give gold_links of indexed documents")
        kind = str(record.get("kind") or "question")
        if "answerable" not in record:
            kind = f"answerable: {kind}"
        rows.append(LabelledQuestion(record["question"].strip(), twin, answerable, kind,
                                     _conversation(record.get("conversation"), where)))
    if not rows:
        raise QuestionFileError(f"{path}: no questions in the file")
    return rows


def error_rates(rows: Sequence[LabelledQuestion], answered: Sequence[bool]) -> dict:
    """{"false_refusal": rate over answerable, "false_answer": rate over unanswerable, "kinds":
    {kind: {"n", "errors", "rate", "answerable"}}}."""
    kinds: dict[str, dict] = defaultdict(lambda: {"n": 0, "errors": 0})
    totals = {True: [0, 0], False: [0, 0]}
    for row, said in zip(rows, answered, strict=True):
        wrong = said != row.answerable
        entry = kinds[row.kind]
        entry["n"] += 1
        entry["errors"] += wrong
        entry["answerable"] = row.answerable
        totals[row.answerable][0] += 1
        totals[row.answerable][1] += wrong
    for entry in kinds.values():
        entry["rate"] = entry["errors"] / entry["n"]
    return {"false_refusal": totals[True][1] / totals[True][0] if totals[True][0] else 0.0,
            "false_answer": totals[False][1] / totals[False][0] if totals[False][0] else 0.0,
            "answerable": totals[True][0], "unanswerable": totals[False][0],
            "kinds": dict(sorted(kinds.items(), key=lambda item: (not item[1]["answerable"], item[0])))}
