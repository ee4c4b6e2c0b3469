"""Incremental indexing: warehouse -> clean -> chunk -> embed -> Milvus.

The index describes itself: every chunk row carries its document's hash and chunk count, so a
run can tell, from Milvus alone, which documents are complete and current. Only new or changed
documents are re-chunked and re-embedded; chunks of removed, replaced or duplicate documents
are deleted. A run that is interrupted leaves documents that are incomplete or stale, and the
next run deletes and rebuilds exactly those: no duplicates, nothing missing.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from llm_twin.config import Settings
from llm_twin.documents import RawDocument
from llm_twin.features.chunk import CHUNKER_VERSION, Chunk, Chunker
from llm_twin.features.clean import CleanDocument, clean_corpus
from llm_twin.warehouse import Warehouse

from .keywords import keyword_text
from .store import ChunkRow, MilvusStore

# How many chunks are embedded and inserted together.
INSERT_BATCH = 128


@dataclass
class IndexReport:
    documents: int = 0  # documents kept after cleaning and deduplication
    duplicates: int = 0
    indexed: int = 0  # documents (re-)chunked and embedded in this run
    removed: int = 0  # documents whose chunks were deleted and not replaced
    unchanged: int = 0
    chunks_written: int = 0
    total_chunks: int = 0
    authors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.documents} documents ({self.duplicates} duplicates dropped): {self.indexed} indexed, "
                f"{self.unchanged} unchanged, {self.removed} removed; {self.chunks_written} chunks written, "
                f"{self.total_chunks} in the index")


def embedding_text(title: str, heading: str, text: str) -> str:
    """What the embedder and BM25 see: the chunk in its document's context."""
    return "\n".join(part for part in (title, heading, text) if part)


class Indexer:
    """Retrieval's write side. ``embedder``: anything with ``name``, ``dimension``,
    ``count_tokens`` and ``embed`` (the local Embedder, or the embedding deployment's handle)."""

    def __init__(self, warehouse: Warehouse, store: MilvusStore, embedder, chunker: Chunker):
        self.warehouse = warehouse
        self.store = store
        self.embedder = embedder
        self.chunker = chunker

    @classmethod
    def from_settings(cls, settings: Settings, embedder, store: MilvusStore) -> Indexer:
        chunker = Chunker(embedder.count_tokens, settings.embedding.chunk_max_tokens,
                          settings.embedding.chunk_overlap_tokens)
        return cls(Warehouse(settings.resolved_warehouse_uri), store, embedder, chunker)

    def _settings_key(self) -> str:
        return f"{CHUNKER_VERSION}|{self.embedder.name}|{self.chunker.max_tokens}|{self.chunker.overlap_tokens}"

    def doc_hash(self, clean: CleanDocument) -> str:
        d = clean.doc
        key = f"{self._settings_key()}\n{d.author}\n{d.category}\n{d.link}\n{d.title}\n{clean.text}"
        return hashlib.sha256(key.encode()).hexdigest()

    def cleaned(self) -> tuple[list[CleanDocument], int]:
        by_author: dict[str, list[RawDocument]] = defaultdict(list)
        for doc in self.warehouse.documents():
            by_author[doc.author_slug].append(doc)
        kept, duplicates = [], 0
        for slug in sorted(by_author):
            documents, dropped = clean_corpus(by_author[slug])
            kept.extend(documents)
            duplicates += len(dropped)
        return kept, duplicates

    def run(self, progress: Callable[[str, int], Callable[[int], None]] | None = None) -> IndexReport:
        """Bring the index in line with the warehouse.

        ``progress(label, total)`` returns a callback advanced by the number of chunks embedded.
        """
        report = IndexReport()
        documents, report.duplicates = self.cleaned()
        report.documents = len(documents)
        report.authors = sorted({c.doc.author for c in documents})
        state = self.store.indexed_documents()

        wanted = {c.id: (c, self.doc_hash(c)) for c in documents}
        todo = []
        for doc_id, (clean, digest) in wanted.items():
            entry = state.get(doc_id)
            current = entry and entry["hashes"] == {digest} and entry["chunks"] == entry["n_chunks"]
            if current:
                report.unchanged += 1
            else:
                todo.append((clean, digest))
        stale = [doc_id for doc_id in state if doc_id not in wanted]
        report.removed = len(stale)
        # Delete what goes away and what is rebuilt before writing anything new.
        self.store.delete_documents(stale + [c.id for c, _ in todo if c.id in state])

        chunked: list[tuple[CleanDocument, str, list[Chunk]]] = [
            (clean, digest, self.chunker.chunk(clean.id, digest, clean.doc.category, clean.text))
            for clean, digest in todo
        ]
        total = sum(len(chunks) for _, _, chunks in chunked)
        advance = progress("embedding chunks", total) if progress and total else (lambda n: None)

        pending: list[tuple[CleanDocument, str, int, Chunk]] = []
        for clean, digest, chunks in chunked:
            pending.extend((clean, digest, len(chunks), chunk) for chunk in chunks)
            while len(pending) >= INSERT_BATCH:
                self._write(pending[:INSERT_BATCH], advance)
                pending = pending[INSERT_BATCH:]
        self._write(pending, advance)
        self.store.flush()

        report.indexed = len(todo)
        report.chunks_written = total
        report.total_chunks = self.store.count()
        return report

    def _write(self, batch, advance: Callable[[int], None]) -> None:
        if not batch:
            return
        texts = [embedding_text(c.doc.title, chunk.heading, chunk.text) for c, _, _, chunk in batch]
        vectors = self.embedder.embed(texts)
        rows = [
            ChunkRow(id=chunk.id, doc_id=clean.id, doc_hash=digest, n_chunks=n, chunk_no=chunk.number,
                     author=clean.doc.author_slug, author_name=clean.doc.author, category=clean.doc.category,
                     link=clean.doc.link, title=clean.doc.title, heading=chunk.heading, text=chunk.text,
                     search_text=keyword_text(text), dense=vector.tolist())
            for (clean, digest, n, chunk), text, vector in zip(batch, texts, vectors, strict=True)
        ]
        self.store.insert(rows)
        advance(len(batch))
