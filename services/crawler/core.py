"""Crawling logic: detect each target's source type, crawl it, store what it finds.

No transport here: the CLI, the pipeline and the crawler deployment all call `Crawler.crawl`.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llm_twin.config import Settings
from llm_twin.documents import author_slug
from llm_twin.twinmodel import Sources
from llm_twin.warehouse import Warehouse

from .errors import CrawlError, InvalidTarget
from .fetch import Budget, Fetcher, check_http_url, current_budget
from .sources import SOURCE_TYPES, SOURCES, CrawlContext
from .sources.git import is_remote

Status = Literal["stored", "updated", "unchanged", "failed"]


@dataclass(frozen=True)
class Outcome:
    target: str  # the page, file or URL this line is about
    status: Status
    detail: str = ""  # the title stored, or why it failed
    doc_id: str | None = None
    source: str = ""  # the source type it was crawled as (feed, git, auto, ...)


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


def _local_copy(uri: str, folder: str) -> str:
    """An object-storage file (s3://, gs://, file://) copied into ``folder``; its local path."""
    import fsspec

    target = str(Path(folder) / Path(uri.split("://", 1)[-1]).name)
    try:
        with fsspec.open(uri, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, ValueError, ImportError) as exc:
        raise InvalidTarget(uri, f"cannot read it: {exc}") from None
    return target


class Crawler:
    def __init__(self, warehouse: Warehouse, fetcher: Fetcher, *, max_file_bytes: int = 512 * 1024,
                 max_pages: int = 500, deadline_s: float | None = None, max_children: int = 50,
                 max_archive_bytes: int = 200 * 1024 * 1024, allow_insecure_git: bool = False):
        self.warehouse = warehouse
        self.fetcher = fetcher
        self.deadline_s = deadline_s
        ctx = CrawlContext(fetcher, max_file_bytes=max_file_bytes, max_pages=max_pages, max_children=max_children,
                           max_archive_bytes=max_archive_bytes, allow_insecure_git=allow_insecure_git)
        self.sources = {name: cls.build(ctx) for name, cls in SOURCES.items()}

    @classmethod
    def from_settings(cls, settings: Settings, *, allow_private: bool = False,
                      allow_insecure_git: bool = False) -> Crawler:
        """``allow_private``: reach non-public addresses too (`twin crawl --allow-private`, the CLI only);
        ``allow_insecure_git``: clone http, ssh and git remotes too (`--allow-insecure-git`, the CLI only)."""
        return cls(Warehouse(settings.resolved_warehouse_uri), Fetcher.from_settings(settings,
                                                                                     allow_private=allow_private),
                   max_file_bytes=settings.crawler.max_file_bytes, max_pages=settings.crawler.max_pages_per_source,
                   deadline_s=settings.crawler.deadline_s, max_children=settings.crawler.sitemap_max_children,
                   max_archive_bytes=settings.crawler.max_archive_bytes, allow_insecure_git=allow_insecure_git)

    def check_twin_name(self, author: str) -> None:
        """Over the API a crawl may add to an existing twin only under the exact name it was created
        with: 'PAUL IUSZTIN' must not add writing to paul-iusztin."""
        existing = self.warehouse.authors().get(author_slug(author))
        if existing is not None and existing != author:
            raise InvalidTarget("twin", f"{author!r} is the twin {existing!r}; use that exact name to add to it")

    def detect(self, target: str) -> str:
        """The source type of a target, from its shape: a registered source's name, or ``web`` for
        a URL decided from its content once fetched."""
        if is_remote(target):
            return next((name for name, cls in SOURCES.items() if cls.claims(target, None)), "web")
        path = Path(target).expanduser()
        if not path.exists():
            raise InvalidTarget(target, "no such file or folder, and not an http(s) URL")
        found = next((name for name, cls in SOURCES.items() if not cls.web and cls.claims(target, path)), None)
        if found is None:
            if zipfile.is_zipfile(path):
                raise InvalidTarget(target, "a zip that is none of the archives read here: not a LinkedIn data export "
                                            "(Shares.csv, Articles/), a Medium export (posts/*.html), a Substack "
                                            "export (posts.csv), an X archive (data/tweets.js) or a .docx")
            raise InvalidTarget(target, "no source type reads it")
        return found

    def crawl(self, targets: Iterable[str], author: str, source: str = "auto",
              on_outcome: Callable[[Outcome], None] = lambda o: None,
              stop: threading.Event | None = None) -> CrawlReport:
        """Crawl every target; a failing target or page is reported, never aborts the batch. The crawl
        ends early (what is left is reported as failed) past ``deadline_s`` or once ``stop`` is set
        (the client went away)."""
        if source not in SOURCE_TYPES:
            raise InvalidTarget(source, f"unknown source type; choose one of {', '.join(SOURCE_TYPES)}")
        author_slug(author)  # fail fast on an author name that cannot make an id
        report = CrawlReport()
        budget = Budget(self.deadline_s, stop)
        token = current_budget.set(budget)  # fetches and parsers check it (fetch.Budget)

        def record(outcome: Outcome) -> None:
            report.outcomes.append(outcome)
            on_outcome(outcome)

        try:
            for target in targets:
                try:
                    budget.check(target)
                    for item in self._items(target, author, source):
                        budget.check(target)
                        if isinstance(item, CrawlError):
                            record(Outcome(item.target, "failed", item.reason, source=source))
                            continue
                        status = self.warehouse.put(item)
                        record(Outcome(item.link or item.source, status, item.title, item.id, source))
                except CrawlError as exc:
                    record(Outcome(exc.target, "failed", exc.reason, source=source))
        finally:
            current_budget.reset(token)
        return report

    def crawl_sources(self, sources: Sources, author: str,
                      on_outcome: Callable[[Outcome], None] = lambda o: None) -> CrawlReport:
        """A TwinModel's sources, each kind with its own source type (feeds as feeds, repositories
        as git); exports and documents in object storage (a LinkedIn export, ``archives``) are
        copied locally first, archives then recognised from their content."""
        report = CrawlReport()
        for kind, targets in sources.targets():
            if kind in ("linkedin-export", "archive"):
                with tempfile.TemporaryDirectory(prefix="twin-archive-") as tmp:
                    for uri in targets:
                        try:
                            local = _local_copy(uri, tmp)
                        except CrawlError as exc:
                            report.outcomes.append(Outcome(uri, "failed", exc.reason, source=kind))
                            on_outcome(report.outcomes[-1])
                            continue
                        source = "auto" if kind == "archive" else kind
                        report.outcomes += self.crawl([local], author, source, on_outcome).outcomes
            else:
                report.outcomes += self.crawl(targets, author, kind, on_outcome).outcomes
        return report

    def _items(self, target: str, author: str, source: str):
        kind = self.detect(target) if source == "auto" else source
        if kind == "web" or SOURCES[kind].web:
            check_http_url(target)
            response = self.fetcher.get(target)
            if kind == "web":
                kind = next(name for name, cls in SOURCES.items() if cls.web and cls.sniff(response))
            return self.sources[kind].crawl(target, author, prefetched=response)
        return self.sources[kind].crawl(target, author)
