"""Chunking per category, within the embedder's token window.

- article/post: paragraphs (hard-wrapped lines re-joined), split into sentences when a paragraph
  is too long, packed up to ``max_tokens`` with ``overlap_tokens`` of the previous chunk repeated;
  the section heading a chunk falls under travels with it.
- code: one file is one document; it is cut at top-level definitions (def/class/function/...)
  and the pieces are packed up to ``max_tokens``; an oversized definition is cut by lines.

Chunk ids are deterministic: the same cleaned document always gives the same ids.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

# Bumped whenever chunking changes, so that `twin index` re-chunks everything indexed before.
CHUNKER_VERSION = "1"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"“(\[A-Z0-9])|(?<=[a-z][.!?])(?=[A-Z][a-z])")
_HEADING = re.compile(r"^#{1,6}\s+\S")
_LIST_ITEM = re.compile(r"^(?:[-*+•→]|\d+[.)])\s+")
_TOP_LEVEL_DEF = re.compile(
    r"^(?:@|def |async def |class |function |export |func |fn |pub |impl |struct |interface |"
    r"public |private |protected |module |package |resource |variable |output |[A-Za-z_][\w.]*\s*=\s*(?:function|\())"
)


@dataclass(frozen=True)
class Chunk:
    id: str
    number: int
    text: str
    heading: str = ""


def chunk_id(doc_id: str, doc_hash: str, number: int) -> str:
    return hashlib.sha256(f"{doc_id}:{doc_hash}:{number}".encode()).hexdigest()[:32]


def _prose_blocks(text: str) -> list[tuple[str, str]]:
    """-> [(heading, paragraph)]: hard-wrapped lines joined, headings remembered."""
    blocks: list[tuple[str, str]] = []
    heading, current = "", []

    def flush() -> None:
        if current:
            blocks.append((heading, " ".join(current)))
            current.clear()

    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            flush()
        elif _HEADING.match(line):
            flush()
            heading = line.lstrip("#").strip().strip("*_ ")
        elif _LIST_ITEM.match(line) or line.startswith(("```", "|", ">")):
            flush()
            current.append(line)
            flush()
        else:
            current.append(line)
    flush()
    return blocks


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s and s.strip()]


class Chunker:
    """``count_tokens`` is the embedder's tokenizer, so chunks fit what the model sees."""

    def __init__(self, count_tokens: Callable[[list[str]], list[int]], max_tokens: int = 200,
                 overlap_tokens: int = 40):
        if overlap_tokens >= max_tokens:
            raise ValueError("chunk overlap must be smaller than the chunk size")
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens

    def chunk(self, doc_id: str, doc_hash: str, category: str, text: str) -> list[Chunk]:
        pieces = self._code_pieces(text) if category == "code" else self._prose_pieces(text)
        return [Chunk(chunk_id(doc_id, doc_hash, n), n, body, heading) for n, (heading, body) in enumerate(pieces)]

    def _fit(self, units: list[str], sizes: list[int], hard_split: Callable[[str], list[str]]
             ) -> tuple[list[str], list[int]]:
        """Split any unit over the budget with ``hard_split``, then by words as a last resort."""
        out_units, out_sizes = [], []
        for unit, size in zip(units, sizes, strict=True):
            if size <= self.max_tokens:
                out_units.append(unit)
                out_sizes.append(size)
                continue
            parts = hard_split(unit)
            if len(parts) <= 1:
                words = unit.split(" ")
                step = max(1, len(words) * self.max_tokens // (size + 1))
                parts = [" ".join(words[i:i + step]) for i in range(0, len(words), step)]
                if len(parts) <= 1:  # one enormous token-dense word: cut characters
                    parts = [unit[i:i + self.max_tokens * 2] for i in range(0, len(unit), self.max_tokens * 2)]
            sub_units, sub_sizes = self._fit(parts, self.count_tokens(parts), lambda u: [u])
            out_units += sub_units
            out_sizes += sub_sizes
        return out_units, out_sizes

    def _pack(self, units: list[tuple[str, str]], joiner: str, overlap: int) -> list[tuple[str, str]]:
        """Greedy packing of (heading, unit) pairs; a heading change starts a new chunk."""
        if not units:
            return []
        texts = [u for _, u in units]
        headings = [h for h, _ in units]
        sizes = self.count_tokens(texts)
        chunks: list[tuple[str, str]] = []
        window: list[int] = []  # indices of units in the current chunk
        total = 0
        for i, size in enumerate(sizes):
            if window and (total + size > self.max_tokens or headings[i] != headings[window[0]]):
                chunks.append((headings[window[0]], joiner.join(texts[j] for j in window)))
                carry: list[int] = []
                if headings[i] == headings[window[-1]]:
                    carried = 0
                    for j in reversed(window):
                        if carried + sizes[j] > overlap or carried + sizes[j] + size > self.max_tokens:
                            break
                        carry.insert(0, j)
                        carried += sizes[j]
                window, total = carry, sum(sizes[j] for j in carry)
            window.append(i)
            total += size
        chunks.append((headings[window[0]], joiner.join(texts[j] for j in window)))
        return chunks

    def _prose_pieces(self, text: str) -> list[tuple[str, str]]:
        units: list[tuple[str, str]] = []
        for heading, paragraph in _prose_blocks(text):
            sentences = split_sentences(paragraph) or [paragraph]
            fitted, _ = self._fit(sentences, self.count_tokens(sentences), lambda s: [s])
            units.extend((heading, s) for s in fitted)
        return self._pack(units, " ", self.overlap_tokens)

    def _code_pieces(self, text: str) -> list[tuple[str, str]]:
        blocks, current = [], []
        for line in text.split("\n"):
            if _TOP_LEVEL_DEF.match(line) and current and not current[-1].startswith("@"):
                blocks.append("\n".join(current))
                current = []
            current.append(line)
        blocks.append("\n".join(current))
        blocks = [b for b in blocks if b.strip()]
        fitted, _ = self._fit(blocks, self.count_tokens(blocks), lambda b: b.split("\n"))
        return self._pack([("", b) for b in fitted], "\n", 0)
