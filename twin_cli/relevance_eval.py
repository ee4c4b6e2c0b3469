"""The answer-or-decline decision run in process, exactly as the chat path runs it
(services.chat.core.Chat.find_sources over a local Retriever): labelled questions in, decisions,
evidence and a fitted calibration out. Used by `twin eval relevance` and `make bench`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from llm_twin.config import Settings
from llm_twin.evaluation.relevance import LabelledQuestion, load_labelled
from services.chat.core import Chat
from services.retrieval.core import Retriever
from services.retrieval.query import contextual_query
from services.retrieval.relevance import RelevanceModel, model_id


class LocalSearch:
    """Chat's SourceSearch over an in-process Retriever."""

    def __init__(self, retriever: Retriever):
        self.retriever = retriever

    async def answer_search(self, query: str, question: str, twin: str, top_k: int, opening: str | None = None):
        return self.retriever.answer_search(query, question, author=twin, top_k=top_k, opening=opening)


def chat_for(retriever: Retriever, settings: Settings) -> Chat:
    return Chat(LocalSearch(retriever), generator=None, top_k=settings.retrieval.top_k,
                min_similarity=settings.retrieval.min_source_similarity,
                min_relevance=settings.retrieval.min_relevance,
                min_follow_up_similarity=settings.retrieval.min_follow_up_similarity,
                max_other_twin_lead=settings.retrieval.max_other_twin_lead,
                min_asking_lead=settings.retrieval.min_asking_lead)


def decide(chat: Chat, rows: Sequence[LabelledQuestion]) -> list[bool]:
    async def run() -> list[bool]:
        return [(await chat.find_sources(row.twin, row.messages))[1] for row in rows]

    return asyncio.run(run())


def fit(retriever: Retriever, rows: Sequence[LabelledQuestion], embedding_model: str | None,
        fitted_on: str) -> RelevanceModel:
    """The evidence of each question's first search (a follow-up searched with its conversation,
    as the chat path does) against its label."""
    return RelevanceModel.fit(evidence(retriever, rows), [row.answerable for row in rows], model_id(embedding_model),
                              fitted_on=fitted_on)


def evidence(retriever: Retriever, rows: Sequence[LabelledQuestion]) -> list:
    return [retriever.answer_search(contextual_query(row.messages), row.question, author=row.twin).evidence
            for row in rows]


def author_resolver(link_authors: dict[str, str]):
    """link -> author: the indexed document's, else the one author of every indexed document on
    that site (a gold link to a copy that indexing deduplicated away)."""
    by_host: dict[str, set[str]] = {}
    for link, author in link_authors.items():
        by_host.setdefault(urlsplit(link).netloc, set()).add(author)

    def author_of(link: str) -> str | None:
        if link in link_authors:
            return link_authors[link]
        authors = by_host.get(urlsplit(link).netloc, set())
        return next(iter(authors)) if len(authors) == 1 else None

    return author_of


def load_files(paths: Sequence[Path], store) -> list[LabelledQuestion]:
    author_of = author_resolver(store.link_authors())
    return [row for path in paths for row in load_labelled(path, author_of)]


def wrong_decisions(rows: Sequence[LabelledQuestion], answered: Sequence[bool]) -> list[dict]:
    """Each question decided wrongly (an answerable one declined, an unanswerable one answered), so
    that a twin's owner sees which ones to look at, not only how many."""
    return [{"question": row.question, "twin": row.twin, "kind": row.kind, "answerable": row.answerable,
             "conversation": list(row.conversation)}
            for row, said in zip(rows, answered, strict=True) if said != row.answerable]


def format_wrong(wrong: Sequence[dict]) -> list[str]:
    return [f"  {'declined, though answerable' if w['answerable'] else 'answered, though unanswerable'}: "
            f"{w['question']!r} ({w['kind']}; twin {w['twin']}{'; a follow-up' if w['conversation'] else ''})"
            for w in wrong]


def format_rates(name: str, rates: dict) -> list[str]:
    lines = [f"{name}: false refusals {rates['false_refusal']:.3f} of {rates['answerable']} answerable, "
             f"false answers {rates['false_answer']:.3f} of {rates['unanswerable']} unanswerable"]
    for kind, entry in rates["kinds"].items():
        what = "false refusals" if entry["answerable"] else "false answers"
        lines.append(f"  {kind:34} {entry['errors']:3}/{entry['n']:<3} {what} ({entry['rate']:.3f})")
    return lines
