"""The chunk store in Milvus: dense vectors + Milvus' own BM25 full-text search, one collection.

A Milvus Lite file by default, a Milvus server URI in a cluster; the same code serves both.
Filters use scalar VARCHAR fields (JSON-field filters are ~30x slower in Milvus Lite).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pymilvus import DataType, Function, FunctionType, MilvusClient, MilvusException

from llm_twin.config import Settings

from .errors import StoreUnavailable

# Milvus Lite answers the query iterator's AllocTimestamp with "not implemented" and pymilvus
# falls back to a client-side timestamp, which is fine; without this, each query logs a traceback.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
logging.getLogger("pymilvus").setLevel(logging.ERROR)

# VARCHAR max_length counts bytes.
MAX_TEXT_BYTES = 16_000
MAX_LINK_BYTES = 2_048
# Milvus Lite 3.2 accepts analyzer filters (stemmer, stop words) but does not apply them, so
# `search_text` arrives already normalised by `keywords.keyword_text` (the same on a server).
ANALYZER = {"type": "standard"}
OUTPUT_FIELDS = ["id", "doc_id", "chunk_no", "author", "author_name", "category", "link", "title", "heading", "text"]


@dataclass(frozen=True)
class ChunkRow:
    id: str
    doc_id: str
    doc_hash: str
    n_chunks: int
    chunk_no: int
    author: str  # slug
    author_name: str
    category: str
    link: str
    title: str
    heading: str
    text: str
    search_text: str  # what BM25 indexes: title + heading + text
    dense: list[float]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    fields: dict


def _clip(value: str, limit: int) -> str:
    raw = value.encode("utf-8")
    return value if len(raw) <= limit else raw[:limit].decode("utf-8", errors="ignore")


def quote(value: str) -> str:
    """A string literal for a Milvus filter expression."""
    return json.dumps(value)


def build_filter(author: str | None = None, category: str | None = None) -> str:
    parts = []
    if author:
        parts.append(f"author == {quote(author)}")
    if category:
        parts.append(f"category == {quote(category)}")
    return " and ".join(parts)


class MilvusStore:
    def __init__(self, uri: str, collection: str, dimension: int, token: str | None = None):
        if "://" not in uri:
            Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.collection = collection
        self.dimension = dimension
        try:
            self.client = MilvusClient(uri=uri, token=token or "")
        except MilvusException as exc:
            if "://" in uri:
                raise
            # Milvus Lite locks its file for the process that opened it.
            raise StoreUnavailable(
                f"cannot open the Milvus Lite file {uri}: {exc.message}. Another process (a running "
                "`twin serve` or `twin index`) probably has it open: stop it, or point every process at "
                "a Milvus server with --milvus-uri / TWIN_MILVUS_URI") from None
        self._ensure_collection()

    @classmethod
    def from_settings(cls, settings: Settings, dimension: int) -> MilvusStore:
        """``dimension``: the embedder's (``Embedder.dimension`` or ``embedding_dimension()``)."""
        return cls(settings.resolved_milvus_uri, settings.collection, dimension, token=settings.milvus_token)

    def close(self) -> None:
        self.client.close()

    def _ensure_collection(self) -> None:
        if self.client.has_collection(self.collection):
            self.client.load_collection(self.collection)
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=64)
        schema.add_field("doc_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("n_chunks", DataType.INT32)
        schema.add_field("chunk_no", DataType.INT32)
        schema.add_field("author", DataType.VARCHAR, max_length=256)
        schema.add_field("author_name", DataType.VARCHAR, max_length=512)
        schema.add_field("category", DataType.VARCHAR, max_length=16)
        schema.add_field("link", DataType.VARCHAR, max_length=MAX_LINK_BYTES)
        schema.add_field("title", DataType.VARCHAR, max_length=2_048)
        schema.add_field("heading", DataType.VARCHAR, max_length=1_024)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
        schema.add_field("search_text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES + 4_096,
                         enable_analyzer=True, analyzer_params=ANALYZER)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dimension)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                                     input_field_names=["search_text"], output_field_names=["sparse"]))
        index = self.client.prepare_index_params()
        index.add_index(field_name="dense", index_type="AUTOINDEX", metric_type="IP")
        index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                        params={"inverted_index_algo": "DAAT_MAXSCORE", "bm25_k1": 1.2, "bm25_b": 0.75})
        for scalar in ("doc_id", "author", "category"):
            index.add_index(field_name=scalar, index_type="INVERTED")
        self.client.create_collection(self.collection, schema=schema, index_params=index)
        self.client.load_collection(self.collection)

    # -- writing -----------------------------------------------------------------------------
    def insert(self, rows: Sequence[ChunkRow]) -> None:
        if not rows:
            return
        self.client.insert(self.collection, [
            {**row.__dict__, "text": _clip(row.text, MAX_TEXT_BYTES), "link": _clip(row.link, MAX_LINK_BYTES),
             "title": _clip(row.title, 2_048), "heading": _clip(row.heading, 1_024),
             "search_text": _clip(row.search_text, MAX_TEXT_BYTES + 4_096)}
            for row in rows
        ])

    def delete_documents(self, doc_ids: Iterable[str]) -> None:
        ids = list(doc_ids)
        for start in range(0, len(ids), 200):
            batch = ids[start:start + 200]
            self.client.delete(self.collection, filter=f"doc_id in {json.dumps(batch)}")

    def flush(self) -> None:
        # Unflushed segments make searches ~50x slower in Milvus Lite: flush after loading.
        self.client.flush(self.collection)

    # -- reading -----------------------------------------------------------------------------
    def _rows(self, fields: list[str]) -> Iterator[dict]:
        """Every row's ``fields``, read in batches (the whole collection, however large)."""
        iterator = self.client.query_iterator(self.collection, batch_size=1000, filter="", output_fields=fields)
        try:
            while batch := iterator.next():
                yield from batch
        finally:
            iterator.close()

    def indexed_documents(self) -> dict[str, dict]:
        """doc_id -> {"hashes": set of doc_hash seen, "chunks": rows, "n_chunks": expected}."""
        state: dict[str, dict] = {}
        for row in self._rows(["doc_id", "doc_hash", "n_chunks"]):
            entry = state.setdefault(row["doc_id"], {"hashes": set(), "chunks": 0, "n_chunks": row["n_chunks"]})
            entry["hashes"].add(row["doc_hash"])
            entry["chunks"] += 1
        return state

    def twins(self) -> dict[str, dict]:
        """author slug -> {"name", "documents", "chunks"} for everyone in the index."""
        found: dict[str, dict] = {}
        for row in self._rows(["author", "author_name", "doc_id"]):
            entry = found.setdefault(row["author"], {"name": row["author_name"], "docs": set(), "chunks": 0})
            entry["docs"].add(row["doc_id"])
            entry["chunks"] += 1
        return {slug: {"name": e["name"], "documents": len(e["docs"]), "chunks": e["chunks"]}
                for slug, e in sorted(found.items())}

    def link_authors(self) -> dict[str, str]:
        """document link -> author name, for everything indexed (labelling questions by their gold links)."""
        return {row["link"]: row["author_name"] for row in self._rows(["link", "author_name"])}

    def count(self) -> int:
        result = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"]) if result else 0

    def has_author(self, slug: str) -> bool:
        return bool(self.client.query(self.collection, filter=build_filter(author=slug), output_fields=["id"], limit=1))

    def dense_search(self, vector: Sequence[float], limit: int, author: str | None = None,
                     category: str | None = None) -> list[Hit]:
        result = self.client.search(self.collection, data=[list(vector)], anns_field="dense", limit=limit,
                                    filter=build_filter(author, category), output_fields=OUTPUT_FIELDS,
                                    search_params={"metric_type": "IP"})
        return [Hit(h["id"], float(h["distance"]), h["entity"]) for h in result[0]]

    def best_elsewhere(self, vector: Sequence[float], author: str) -> float | None:
        """The best dense similarity of ``vector`` among the chunks of every twin but ``author``
        (None: nobody else is in the index)."""
        result = self.client.search(self.collection, data=[list(vector)], anns_field="dense", limit=1,
                                    filter=f"author != {quote(author)}", output_fields=["id"],
                                    search_params={"metric_type": "IP"})
        return float(result[0][0]["distance"]) if result and result[0] else None

    def similarity(self, vector: Sequence[float], chunk_ids: Sequence[str]) -> dict[str, float]:
        """The dense similarity of ``vector`` to each of these chunks (an exact lookup, not a search)."""
        if not chunk_ids:
            return {}
        result = self.client.search(self.collection, data=[list(vector)], anns_field="dense", limit=len(chunk_ids),
                                    filter=f"id in [{', '.join(quote(c) for c in chunk_ids)}]", output_fields=["id"],
                                    search_params={"metric_type": "IP"})
        return {h["id"]: float(h["distance"]) for h in result[0]}

    def keyword_search(self, query: str, limit: int, author: str | None = None,
                       category: str | None = None) -> list[Hit]:
        result = self.client.search(self.collection, data=[query], anns_field="sparse", limit=limit,
                                    filter=build_filter(author, category), output_fields=OUTPUT_FIELDS,
                                    search_params={"metric_type": "BM25"})
        # BM25 scores are never negative; Milvus Lite reports them negated (best first all the
        # same), a Milvus server as they are. abs() gives the true score from both.
        return [Hit(h["id"], abs(float(h["distance"])), h["entity"]) for h in result[0]]
