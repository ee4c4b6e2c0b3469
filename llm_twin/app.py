"""Wiring: builds the platform's parts from Settings. The one place that knows how they connect."""

from __future__ import annotations

from services.crawler.core import Crawler
from services.crawler.fetch import Fetcher
from services.embedding.core import Embedder
from services.retrieval.core import Retriever
from services.retrieval.store import MilvusStore

from .config import Settings, configure_torch_threads
from .features.chunk import Chunker
from .features.index import Indexer
from .warehouse import Warehouse


def open_warehouse(settings: Settings) -> Warehouse:
    return Warehouse(settings.resolved_warehouse_uri)


def load_embedder(settings: Settings) -> Embedder:
    configure_torch_threads(settings)
    return Embedder(settings.embedding_model, device=settings.embedding_device,
                    batch_size=settings.embedding_batch_size)


def open_store(settings: Settings, dimension: int) -> MilvusStore:
    return MilvusStore(settings.resolved_milvus_uri, settings.collection, dimension, token=settings.milvus_token)


def build_crawler(settings: Settings, warehouse: Warehouse) -> Crawler:
    return Crawler(warehouse, Fetcher.from_settings(settings), max_file_bytes=settings.max_file_bytes,
                   max_pages=settings.max_pages_per_source)


def build_indexer(settings: Settings, embedder: Embedder, store: MilvusStore) -> Indexer:
    chunker = Chunker(embedder.count_tokens, settings.chunk_max_tokens, settings.chunk_overlap_tokens)
    return Indexer(open_warehouse(settings), store, embedder, chunker)


def build_retriever(settings: Settings, embedder: Embedder, store: MilvusStore) -> Retriever:
    return Retriever(store, embedder)
