"""A LinkedIn data-export zip: its posts (Shares.csv) and its articles (Articles/*.html)."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from llm_twin.documents import RawDocument

from ..errors import CrawlError, ParseError
from ..extract import extract_article
from .archive import ArchiveSource, BoundedZip
from .base import Item


def is_linkedin_export(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(PurePosixPath(n).name == "Shares.csv" for n in names) or any(
        "Articles/" in n and n.lower().endswith(".html") for n in names)


WHAT = "the zip LinkedIn's 'Get a copy of your data' sends"


class LinkedInExportSource(ArchiveSource):
    """Every member is read with its size bounded (archive.BoundedZip)."""

    name = "linkedin-export"
    summary = "a LinkedIn data export zip: posts and articles (CLI, or a TwinModel's linkedinExport)"

    @classmethod
    def claims(cls, target: str, path: Path | None) -> bool:
        return path is not None and path.is_file() and zipfile.is_zipfile(path) and is_linkedin_export(path)

    def crawl(self, target: str, author: str) -> Iterator[Item]:
        with BoundedZip(target, self.max_bytes, WHAT) as archive:
            names = archive.names()
            shares = [n for n in names if PurePosixPath(n).name == "Shares.csv"]
            articles = sorted(n for n in names if "Articles/" in n and n.lower().endswith(".html"))
            if not shares and not articles:
                raise ParseError(target, "zip has neither Shares.csv nor Articles/*.html: not a LinkedIn export")
            for name in shares:
                yield from self._posts(archive.read(name), target, author)
            for name in articles:
                source = f"{archive.name}#{name}"
                try:
                    page = extract_article(archive.read(name), source)
                    yield RawDocument.create(author=author, category="article", source=source,
                                             link=source, title=page.title or PurePosixPath(name).stem,
                                             text=page.text, published=page.date, platform="linkedin")
                except CrawlError as exc:
                    yield exc

    def _posts(self, data: bytes, target: str, author: str) -> Iterator[Item]:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig", errors="replace")))
        for number, row in enumerate(reader, start=1):
            text = (row.get("ShareCommentary") or "").replace('""', '"').strip()
            if not text:
                continue  # a reshare with no words of the author's own
            link = (row.get("ShareLink") or "").strip()
            if urlsplit(link).scheme not in ("http", "https"):
                link = ""  # only http(s) links are stored: a javascript: or file: link is not followed
            source = link or f"{Path(target).name}#Shares.csv:{number}"
            first_line = text.splitlines()[0]
            yield RawDocument.create(author=author, category="post", source=source, link=link,
                                     title=first_line[:80], text=text, published=row.get("Date") or None,
                                     platform="linkedin")
