"""Query understanding before search: conversation-aware rewriting and self-query.

- ``contextual_query(messages)``: a follow-up ("and how would I deploy that?") carries its topic in
  earlier turns. When the last question leans on them (pronouns and determiners that point back,
  or too few words of its own) the previous user question is put in front of it. Rules, no model:
  on tests/data/handbook_questions_hard.jsonl they lift follow-up hit@5 from 0.50 to 1.00; a
  configured LLM endpoint can do the same with ``rewrite_with_llm`` (see ``QueryRewriter``).
- ``asking_clause(question)``: a question asked after an opening about the asker ("We sell
  furniture online and have 50,000 product descriptions; how should we split them into chunks?")
  -> the opening and the clause that asks; the chat decides on the asking clause when the whole
  is declined (services/chat/core.py says when that answers).
- ``self_query(question, authors)``: an author named in the question ("What does Maxime Labonne say
  about ...", "Paul's take on ...") becomes a filter when the caller did not set one, and the name
  leaves the text searched (it appears in every header of that author's pages and would only
  add noise). Only authors that are in the index are recognised: it never invents one. "In your
  code" / "your repositories" asks for the code category.

Pure functions over strings: no store, model or transport here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .keywords import STOP_WORDS, keyword_terms

# Words that point back to something said before. Kept narrow: "the", "a" or "how" are not.
_ANAPHORA = frozenset(["it", "its", "it's", "itself", "that", "those", "these", "them", "they", "their", "theirs",
                       "there", "this", "one", "ones", "either", "both", "former", "latter", "he", "she", "his",
                       "her", "him", "above", "previous", "same", "such"])
_FOLLOW_UP_OPENERS = re.compile(r"^\s*(and|also|so|then|but|what about|how about|why not|ok|okay)\b", re.I)
MIN_OWN_TERMS = 3  # a question with fewer content words of its own is read in context


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def points_back(question: str) -> bool:
    """An opener ("and ...", "what about ...") or a word that points back ("it", "those")."""
    if _FOLLOW_UP_OPENERS.match(question):
        return True
    return any(w in _ANAPHORA or w.split("'")[0] in _ANAPHORA for w in _words(question))


def is_follow_up(question: str) -> bool:
    return points_back(question) or len(keyword_terms(question)) < MIN_OWN_TERMS


def contextual_query(messages: Sequence[dict]) -> str:
    """The text to search with for the last user message of a conversation."""
    users = [str(m.get("content") or "").strip() for m in messages if m.get("role") == "user"]
    users = [u for u in users if u]
    if not users:
        return ""
    question = users[-1]
    if len(users) == 1 or not is_follow_up(question):
        return question
    return f"{topic_before(users)} {question}"


def topic_before(users: Sequence[str]) -> str:
    """The nearest earlier user question that stands on its own (a chain of follow-ups keeps
    pointing at it); "" when the last question is the first."""
    for earlier in reversed(users[:-1]):
        if not is_follow_up(earlier) or earlier is users[0]:
            return earlier
    return ""


# Where an opening ends and the question starts: a clause mark (or a dash between spaces), an
# optional connective, then a word that asks (an interrogative, an auxiliary, or a request). A comma
# inside a list ("feature, training and inference pipelines") is not followed by one.
_ASKING = re.compile(r"(?:[;:.!?,]|\s[-\u2013\u2014])\s+(?:(?:so|and|but|then|now)\s+)?"
                     r"(?=(?:how|what|which|why|when|where|who|whom|whose|can|could|should|would|will|is|are|"
                     r"was|were|do|does|did|may|might|shall|has|have|any|tell|explain|describe|please)\b)", re.I)
MIN_OPENING_WORDS = 2


def asking_clause(question: str) -> tuple[str, str] | None:
    """-> (opening, asking clause) of a question asked after something else, split at the last
    clause mark followed by a word that asks; None when there is no such mark, the opening is
    under MIN_OPENING_WORDS words or the asking clause has no content word."""
    text = (question or "").strip()
    cuts = list(_ASKING.finditer(text))
    if not cuts:
        return None
    opening, ask = text[:cuts[-1].start() + 1].strip(), text[cuts[-1].end():].strip()
    if len(_words(opening)) < MIN_OPENING_WORDS or not keyword_terms(ask):
        return None
    return opening, ask


def with_topic(messages: Sequence[dict]) -> str:
    """The last question with the topic it may follow in front, whatever its wording: for a
    follow-up with no word pointing back ("Why keep the overlap small?" after a question on
    chunking), tried when the question alone finds nothing. "" without an earlier question."""
    users = [u for u in (str(m.get("content") or "").strip() for m in messages if m.get("role") == "user") if u]
    topic = topic_before(users) if len(users) > 1 else ""
    return f"{topic} {users[-1]}" if topic else ""


@dataclass(frozen=True)
class SelfQuery:
    query: str                  # the question without the author's name
    author: str | None = None   # slug of an author named in the question
    category: str | None = None


_CODE = re.compile(r"\b(in|from) (your|his|her|their) (code|repositor(y|ies)|repos?)\b|\bsource code\b", re.I)


def _name_patterns(name: str, first_names: dict[str, int], last_names: dict[str, int]) -> list[str]:
    parts = name.split()
    patterns = [re.escape(name)]
    if len(parts) > 1:
        if last_names.get(parts[-1].lower()) == 1:
            patterns.append(re.escape(parts[-1]))
        if first_names.get(parts[0].lower()) == 1:
            patterns.append(re.escape(parts[0]))
    return patterns


def self_query(question: str, authors: Iterable[tuple[str, str]]) -> SelfQuery:
    """``authors``: (slug, full name) of everyone in the index. A first or last name alone counts
    only when exactly one author has it; a name that is also an ordinary word of the question
    (lower case) does not count."""
    authors = list(authors)
    first_names: dict[str, int] = {}
    last_names: dict[str, int] = {}
    for _, name in authors:
        parts = name.split()
        if parts:
            first_names[parts[0].lower()] = first_names.get(parts[0].lower(), 0) + 1
            last_names[parts[-1].lower()] = last_names.get(parts[-1].lower(), 0) + 1
    found: list[tuple[str, re.Match]] = []
    for slug, name in authors:
        for pattern in _name_patterns(name, first_names, last_names):
            # Case-sensitive on the capital: "paul" in lower case is not taken as a name.
            match = re.search(rf"(?<![\w-])({pattern})(?:['’]s)?(?![\w-])", question)
            if match and match.group(1).lower() not in STOP_WORDS:
                found.append((slug, match))
                break
    category = "code" if _CODE.search(question) else None
    if len({slug for slug, _ in found}) != 1:
        return SelfQuery(question, None, category)  # none, or several authors: no filter
    slug, match = found[0]
    rest = (question[:match.start()] + question[match.end():]).strip(" ,:;-")
    rest = re.sub(r"\s{2,}", " ", rest)
    rest = re.sub(r"^(according to|by|from)\s*[,:]?\s*", "", rest, flags=re.I)
    return SelfQuery(rest if keyword_terms(rest) else question, slug, category)


EXPANSION_PROMPT = ("Rewrite this question using different words. Reply with the rewritten question only.\n"
                    "Question: {question}")


def expansions(question: str, complete, n: int = 1) -> list[str]:
    """Other phrasings of a question from an LLM (``complete(prompt) -> text``), first lines only,
    without repeats of the question. Measured in `make bench` (twin_cli/bench_retrieval.py): with the
    local 135M model the "phrasings" are answers, and fusing them lowers hit@1 on the hard set, so
    the default pipeline does not expand."""
    out: list[str] = []
    for _ in range(n):
        text = (complete(EXPANSION_PROMPT.format(question=question)) or "").strip().split("\n")[0].strip()
        if text and text.lower() != question.lower() and text not in out:
            out.append(text)
    return out
