"""A Substack export: ``posts.csv`` (post_id, post_date, is_published, title, subtitle, type, ...)
and ``posts/<post_id>.html`` with each post's body. Unpublished rows are drafts and stay out; the
subscriber list beside them is personal data, not writing, and is never opened."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from llm_twin.documents import RawDocument

from ..errors import CrawlError, ParseError
from .archive import ArchiveSource, BoundedZip, archive_link, html_text, zip_names
from .base import Item

WHAT = "Substack's export zip (Settings -> Export your data)"


class SubstackExportSource(ArchiveSource):
    name = "substack-export"
    summary = "a Substack export zip: published posts (drafts and the subscriber list left out; CLI only)"

    @classmethod
    def claims(cls, target: str, path: Path | None) -> bool:
        return any(PurePosixPath(n).name == "posts.csv" for n in zip_names(path))

    def crawl(self, target: str, author: str) -> Iterator[Item]:
        with BoundedZip(target, self.max_bytes, WHAT) as archive:
            names = archive.names()
            listing = [n for n in names if PurePosixPath(n).name == "posts.csv"]
            if not listing:
                raise ParseError(target, f"the zip has no posts.csv: not {WHAT}")
            bodies = {PurePosixPath(n).stem: n for n in names
                      if PurePosixPath(n).parent.name == "posts" and n.lower().endswith(".html")}
            rows = csv.DictReader(io.StringIO(archive.read(listing[0]).decode("utf-8-sig", errors="replace")))
            for row in rows:
                if (row.get("is_published") or "").strip().lower() not in ("true", "1", "yes"):
                    continue  # a draft
                post_id = (row.get("post_id") or "").strip()
                member = bodies.get(post_id)
                if member is None:
                    yield ParseError(f"{archive.name}#posts/{post_id}.html", "posts.csv lists this published post "
                                                                             "but the zip has no body for it")
                    continue
                try:
                    yield self._post(archive, member, row, post_id, author)
                except CrawlError as exc:
                    yield exc

    @staticmethod
    def _post(archive: BoundedZip, member: str, row: dict, post_id: str, author: str) -> RawDocument:
        text = html_text(archive.read(member))
        subtitle = (row.get("subtitle") or "").strip()
        if subtitle:
            text = f"{subtitle}\n\n{text}"
        if not text.strip():
            raise ParseError(f"{archive.name}#{member}", "the post has no body text")
        title = (row.get("title") or "").strip() or post_id
        category = "post" if (row.get("type") or "").strip().lower() in ("thread", "note") else "article"
        source = archive_link("substack", post_id)
        return RawDocument.create(author=author, category=category, source=source, link=source, title=title,
                                  text=text, published=(row.get("post_date") or None), platform="substack")
