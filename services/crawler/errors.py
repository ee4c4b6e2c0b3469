"""Crawler domain errors. Each one names the input it is about and, where there is one, the fix."""

from __future__ import annotations


class CrawlError(Exception):
    """A source could not be crawled. ``target`` is the URL or path it is about."""

    def __init__(self, target: str, reason: str):
        super().__init__(f"{target}: {reason}")
        self.target = target
        self.reason = reason

    def __reduce__(self):
        # Ray ships exceptions between processes by pickling: rebuild from both arguments.
        return (self.__class__, (self.target, self.reason))


class InvalidTarget(CrawlError):
    """The input itself is wrong (not http(s), missing file, unknown source type)."""


class FetchError(CrawlError):
    """The network said no: unreachable host, HTTP error, timeout, robots.txt, size cap."""


class ParseError(CrawlError):
    """The content arrived but is not what its type promises (malformed feed, empty page)."""


class Stopped(CrawlError):
    """The crawl ran past its deadline or its client went away: nothing more of it runs."""
