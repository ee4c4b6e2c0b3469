"""The interface every source implements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, Union

from llm_twin.documents import RawDocument

from ..errors import CrawlError

# A source yields documents, and a CrawlError for each page of it that failed: one bad entry
# of a feed is reported and the rest of the feed is still crawled. A source raises CrawlError
# only when the target as a whole cannot be read.
Item = Union[RawDocument, CrawlError]


class Source(Protocol):
    name: str

    def crawl(self, target: str, author: str) -> Iterator[Item]: ...
