"""Cleaning: page chrome out, whitespace normalised, duplicates and repeated boilerplate dropped.

Cleaning is corpus-level (a paragraph is boilerplate because it repeats across an author's
documents), so it runs over all of an author's documents at once and is deterministic: the same
warehouse always gives the same cleaned texts.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from ..documents import RawDocument

# Whole lines that are page chrome on Substack, Medium and similar platforms.
CHROME_LINES = re.compile(
    r"^(?:#+\s*)?(?:"
    r"sign in|sign up|subscribe(?:sign in)?|share(?: this post)?|copy link|facebook|email|twitter|"
    r"linkedin|notes?|other|top|latest|discussions?|comments?|restacks?|no posts|previous|next|"
    r"previousnext|ready for more\?|start writingget the app|get the app|open in app|listen|follow|"
    r"discussion about this post|privacy ∙ terms ∙ collection notice|"
    r"substack is the home for great culture|this site requires javascript to run correctly\.? "
    r"please turn on javascript or|unblock scripts|please turn on javascript or unblock scripts|"
    r"©.*|[a-z0-9.-]+\.substack\.com|image by (?:the )?author\.?|[#*.>)_-]+|\* \* \*|"
    r"see more recommendations|to make medium work, we log user data.*"
    r")\s*$",
    re.IGNORECASE,
)
# Chrome glued into running text (Medium pages scraped without line breaks).
INLINE_CHROME = [
    re.compile(r"Open in appSign upSign inWrite(?:Sign upSign in)?"),
    re.compile(r"·\s*Follow(?:Published in[^·]*)?"),
    re.compile(r"\d+\s*min read\s*·\s*[A-Z][a-z]{2} \d{1,2}, \d{4}(?:\d+)?(?:Listen)?(?:Share)?"),
    re.compile(r"See more recommendations.*\Z", re.DOTALL),
    re.compile(r"(?:Follow)?Written by [^\n]{0,80}?Followers.*\Z", re.DOTALL),
    re.compile(r"Recommended from Medium.*\Z", re.DOTALL),
    re.compile(r"To make Medium work, we log user data.*\Z", re.DOTALL),
    re.compile(r"This site requires JavaScript to run correctly\.\s*Please turn on JavaScript or\s*unblock scripts"),
]
# A paragraph seen in at least this share of an author's documents (and in at least
# MIN_REPEATS of them) is boilerplate: newsletter footers, "Hello there, I am ..." intros.
BOILERPLATE_SHARE = 0.15
MIN_REPEATS = 3
# Share of the shorter document's 5-word shingles found in the longer one: the same article
# on Medium and on Substack shares 0.6-0.85; newsletters sharing a section stay under 0.5.
NEAR_DUPLICATE_CONTAINMENT = 0.6


def normalise_whitespace(text: str) -> str:
    # NFKC folds the "𝗯𝗼𝗹𝗱" and "𝘪𝘵𝘢𝘭𝘪𝘤" Unicode letters of LinkedIn-style posts into plain letters,
    # which the tokenizers and BM25 otherwise see as unknown symbols.
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u00a0", " ").replace("\u200b", "")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def strip_chrome(text: str) -> str:
    for pattern in INLINE_CHROME:
        text = pattern.sub(" ", text)
    return "\n".join(line for line in text.split("\n") if not CHROME_LINES.match(line.strip()))


def _key(paragraph: str) -> str:
    return re.sub(r"\W+", " ", paragraph.lower()).strip()


def paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n") if p.strip()]


@dataclass(frozen=True)
class CleanDocument:
    doc: RawDocument
    text: str  # cleaned body

    @property
    def id(self) -> str:
        return self.doc.id


def _shingles(text: str, n: int = 5) -> set[int]:
    words = re.findall(r"\w+", text.lower())
    return {hash(tuple(words[i:i + n])) for i in range(max(1, len(words) - n + 1))}


def _containment(a: set[int], b: set[int]) -> float:
    return len(a & b) / min(len(a), len(b)) if a and b else 0.0


def clean_corpus(documents: list[RawDocument]) -> tuple[list[CleanDocument], dict[str, str]]:
    """Clean all documents of one author.

    Returns the kept documents and, for each dropped duplicate, doc id -> id of the copy kept.
    """
    docs = sorted(documents, key=lambda d: d.id)
    prose = [d for d in docs if d.category != "code"]
    pre = {d.id: normalise_whitespace(strip_chrome(normalise_whitespace(d.text))) if d.category != "code"
           else d.text.replace("\r\n", "\n").strip() for d in docs}

    seen_in = Counter()
    for d in prose:
        seen_in.update({_key(p) for p in paragraphs(pre[d.id]) if not p.lstrip().startswith("#")})
    threshold = max(MIN_REPEATS, BOILERPLATE_SHARE * len(prose))
    boilerplate = {k for k, n in seen_in.items() if n >= threshold and k}

    cleaned: list[CleanDocument] = []
    for d in docs:
        text = pre[d.id]
        if d.category != "code":
            kept = [p for p in paragraphs(text) if _key(p) not in boilerplate]
            text = normalise_whitespace("\n".join(kept))
        if text:
            cleaned.append(CleanDocument(d, text))
    return _drop_duplicates(cleaned)


def _drop_duplicates(cleaned: list[CleanDocument]) -> tuple[list[CleanDocument], dict[str, str]]:
    """Keep the longest of each set of (near-)identical documents; ties go to the smaller link."""
    order = sorted(cleaned, key=lambda c: (-len(c.text), c.doc.link))
    kept: list[tuple[CleanDocument, set[int]]] = []
    dropped: dict[str, str] = {}
    for candidate in order:
        grams = _shingles(candidate.text)
        for keeper, keeper_grams in kept:
            if keeper.doc.category != candidate.doc.category:
                continue
            if len(candidate.text) < 0.5 * len(keeper.text):
                continue  # too different in length to be a copy
            if _containment(grams, keeper_grams) >= NEAR_DUPLICATE_CONTAINMENT:
                dropped[candidate.id] = keeper.id
                break
        else:
            kept.append((candidate, grams))
    return sorted((c for c, _ in kept), key=lambda c: c.id), dropped
