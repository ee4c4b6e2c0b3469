"""Keeping a twin fresh: re-crawl its sources, re-index what changed, and say whether enough new
writing arrived to train again. Kubernetes-free (the handlers call it on the refresh timer and
write the status); it reads and writes the twin's warehouse, index and artifact store.

What "removed" means: a document crawled from the twin's pages (sitemaps, articles) or
repositories last time and not found this time is removed from the warehouse (the index then
drops its chunks). Feeds only list their latest entries, so an entry that leaves a feed is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import fsspec

from llm_twin.config import Settings
from llm_twin.documents import author_slug
from llm_twin.twinmodel import TwinModelSpec

REMOVABLE = ("auto", "git")  # source types whose listing is complete (not a feed's latest entries)


@dataclass
class RefreshReport:
    added: int = 0
    changed: int = 0
    removed: int = 0
    failed: int = 0
    documents: int = 0
    chunks_written: int = 0
    seen: dict[str, str] = field(default_factory=dict)  # doc id -> source type

    @property
    def changes(self) -> int:
        return self.added + self.changed + self.removed


def settings_for(spec: TwinModelSpec, base: Settings | None = None) -> Settings:
    """The platform settings the twin's spec implies (its warehouse, index and artifact store)."""
    return (base or Settings()).with_overrides(
        warehouse_uri=spec.storage.warehouse_uri or None, artifact_uri=spec.storage.artifact_uri or None,
        milvus_uri=spec.vector_store.milvus_uri, collection=spec.vector_store.collection)


def _state_path(settings: Settings, author: str) -> str:
    return f"{settings.resolved_artifact_uri.rstrip('/')}/refresh/{author_slug(author)}.json"


def _load_seen(settings: Settings, author: str) -> dict[str, str]:
    try:
        with fsspec.open(_state_path(settings, author), "r") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _save_seen(settings: Settings, author: str, seen: dict[str, str]) -> None:
    fs, path = fsspec.core.url_to_fs(_state_path(settings, author))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(seen, f, sort_keys=True)


def refresh(spec: TwinModelSpec, settings: Settings, embedder) -> RefreshReport:
    """Crawl, drop what disappeared, index incrementally. ``embedder``: loaded once by the caller."""
    from services.crawler.core import Crawler
    from services.retrieval.indexer import Indexer
    from services.retrieval.store import MilvusStore

    author = spec.author.name
    previous = _load_seen(settings, author)
    crawler = Crawler.from_settings(settings)
    try:
        crawl = crawler.crawl_sources(spec.author.sources, author)
    finally:
        crawler.fetcher.close()
    report = RefreshReport(added=crawl.count("stored"), changed=crawl.count("updated"), failed=crawl.count("failed"))
    report.seen = {o.doc_id: o.source for o in crawl.outcomes if o.doc_id}
    crawled_kinds = {o.source for o in crawl.outcomes if o.status != "failed"}
    for doc_id, kind in previous.items():
        if doc_id in report.seen:
            continue
        if kind in REMOVABLE and kind in crawled_kinds and crawler.warehouse.delete(doc_id):
            report.removed += 1
        elif kind not in REMOVABLE:
            report.seen[doc_id] = kind  # still the twin's writing; a feed just stopped listing it
    report.documents = len(crawler.warehouse.paths(author))
    if report.changes or not previous:
        store = MilvusStore.from_settings(settings, embedder.dimension)
        try:
            report.chunks_written = Indexer.from_settings(settings, embedder, store).run().chunks_written
        finally:
            store.close()
    _save_seen(settings, author, report.seen)
    return report
