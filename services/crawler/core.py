"""Crawling logic: detect each target's source type, crawl it, store what it finds.

No transport here: the CLI and (later) the gRPC service both call `Crawler.crawl`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llm_twin.documents import author_slug
from llm_twin.warehouse import Warehouse

from .errors import CrawlError, InvalidTarget
from .fetch import Fetcher, Response, check_http_url
from .sources import (
    ArticleSource,
    FeedSource,
    FolderSource,
    GitSource,
    LinkedInExportSource,
    SitemapSource,
)
from .sources.git import is_remote
from .sources.linkedin import is_linkedin_export

SOURCE_TYPES = ("auto", "article", "feed", "sitemap", "git", "folder", "linkedin-export")
Status = Literal["stored", "updated", "unchanged", "failed"]


@dataclass(frozen=True)
class Outcome:
    target: str  # the page, file or URL this line is about
    status: Status
    detail: str = ""  # the title stored, or why it failed
    doc_id: str | None = None


@dataclass
class CrawlReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def ok(self) -> bool:
        """True when at least something could be crawled (stored, updated or unchanged)."""
        return any(o.status != "failed" for o in self.outcomes)

    def summary(self) -> str:
        return (f"{self.count('stored')} stored, {self.count('updated')} updated, "
                f"{self.count('unchanged')} unchanged, {self.count('failed')} failed")


def _sniff_web(response: Response) -> str:
    """'feed', 'sitemap' or 'article' from a fetched response."""
    kind = response.content_type.lower()
    head = response.body[:2048].lstrip().lower()
    if b"<urlset" in head or b"<sitemapindex" in head:
        return "sitemap"
    if b"<rss" in head or b"<feed" in head or b"<rdf:rdf" in head or "rss" in kind or "atom" in kind:
        return "feed"
    return "article"


class Crawler:
    def __init__(self, warehouse: Warehouse, fetcher: Fetcher, *, max_file_bytes: int = 512 * 1024,
                 max_pages: int = 500):
        self.warehouse = warehouse
        self.fetcher = fetcher
        self.article = ArticleSource(fetcher)
        self.feed = FeedSource(fetcher, max_pages)
        self.sitemap = SitemapSource(fetcher, max_pages)
        self.git = GitSource(max_file_bytes)
        self.folder = FolderSource(max_file_bytes)
        self.linkedin = LinkedInExportSource()

    def detect(self, target: str) -> str:
        """The source type of a target, from its shape (and for web URLs, its content)."""
        if is_remote(target):
            if target.endswith(".git") or target.startswith(("git@", "ssh://", "git://")):
                return "git"
            return "web"  # decided from the content once fetched
        path = Path(target).expanduser()
        if not path.exists():
            raise InvalidTarget(target, "no such file or folder, and not an http(s) URL")
        if path.is_dir():
            return "git" if (path / ".git").exists() else "folder"
        if zipfile.is_zipfile(path):
            if is_linkedin_export(path):
                return "linkedin-export"
            raise InvalidTarget(target, "a zip that is not a LinkedIn data export (no Shares.csv or Articles/)")
        return "folder"

    def crawl(self, targets: Iterable[str], author: str, source: str = "auto",
              on_outcome: Callable[[Outcome], None] = lambda o: None) -> CrawlReport:
        """Crawl every target; a failing target or page is reported, never aborts the batch."""
        if source not in SOURCE_TYPES:
            raise InvalidTarget(source, f"unknown source type; choose one of {', '.join(SOURCE_TYPES)}")
        author_slug(author)  # fail fast on an author name that cannot make an id
        report = CrawlReport()

        def record(outcome: Outcome) -> None:
            report.outcomes.append(outcome)
            on_outcome(outcome)

        for target in targets:
            try:
                for item in self._items(target, author, source):
                    if isinstance(item, CrawlError):
                        record(Outcome(item.target, "failed", item.reason))
                        continue
                    status = self.warehouse.put(item)
                    record(Outcome(item.link, status, item.title, item.id))
            except CrawlError as exc:
                record(Outcome(exc.target, "failed", exc.reason))
        return report

    def _items(self, target: str, author: str, source: str):
        kind = self.detect(target) if source == "auto" else source
        if kind in ("web", "article", "feed", "sitemap"):
            check_http_url(target)
            response = self.fetcher.get(target)
            kind = _sniff_web(response) if kind == "web" else kind
            web = {"article": self.article, "feed": self.feed, "sitemap": self.sitemap}[kind]
            return web.crawl(target, author, prefetched=response)
        return {"git": self.git, "folder": self.folder, "linkedin-export": self.linkedin}[kind].crawl(target, author)
