"""The interface every crawler source implements, and what it is built from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from llm_twin.documents import RawDocument

from ..errors import CrawlError
from ..fetch import Fetcher, Response

# A source yields documents, and a CrawlError for each page of it that failed: one bad entry
# of a feed is reported and the rest of the feed is still crawled. A source raises CrawlError
# only when the target as a whole cannot be read.
Item = RawDocument | CrawlError


@dataclass(frozen=True)
class CrawlContext:
    """What a source may be built with: the crawler's fetcher (with its address guard) and limits."""

    fetcher: Fetcher
    max_file_bytes: int = 512 * 1024
    max_pages: int = 500
    max_children: int = 50
    max_archive_bytes: int = 200 * 1024 * 1024
    allow_insecure_git: bool = False


class Source(Protocol):
    """One kind of source, registered once in ``sources/__init__.py``: the CLI's ``--source`` choices,
    the API's ``source_type`` and auto-detection all come from the registry."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help and the docs
    over_api: ClassVar[bool]  # False: it reads the server's own files (CLI only)
    web: ClassVar[bool]  # True: fetched over HTTP first, then recognised by its content (``sniff``)

    @classmethod
    def build(cls, ctx: CrawlContext) -> Source: ...

    @classmethod
    def claims(cls, target: str, path: Path | None) -> bool:
        """Auto-detection before fetching: whether ``target`` is this kind of source (``path``: the
        local file or folder it names, None for a URL)."""
        ...

    @classmethod
    def sniff(cls, response: Response) -> bool:
        """Auto-detection of a fetched web target, from its content (web sources only)."""
        ...

    def crawl(self, target: str, author: str) -> Iterator[Item]: ...


class WebSource:
    """Defaults of a source fetched over HTTP: never claims a target before it is fetched."""

    over_api: ClassVar[bool] = True
    web: ClassVar[bool] = True

    @classmethod
    def claims(cls, target: str, path: Path | None) -> bool:
        return False


class LocalSource:
    """Defaults of a source that is not sniffed from web content."""

    web: ClassVar[bool] = False

    @classmethod
    def sniff(cls, response: Response) -> bool:
        return False
