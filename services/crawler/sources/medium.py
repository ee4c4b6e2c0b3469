"""A Medium export (Settings -> Download your information): the author's published posts.

The zip's ``posts/`` folder holds one HTML file per post: an ``h-entry`` article with a ``p-name``
title, an ``e-content`` body, a ``dt-published`` time and a ``p-canonical`` link. Drafts
(``posts/draft_...``) and everything beside ``posts/`` (claps, bookmarks, highlights, profile, ...:
other people's writing or engagement data) are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from llm_twin.documents import RawDocument

from ..errors import CrawlError, ParseError
from .archive import ArchiveSource, BoundedZip, archive_link, html_text, zip_names
from .base import Item

WHAT = "Medium's export zip (Settings -> Download your information)"


def _post_files(names: list[str]) -> list[str]:
    return sorted(n for n in names if PurePosixPath(n).parent.name == "posts" and n.lower().endswith(".html"))


class MediumExportSource(ArchiveSource):
    name = "medium-export"
    summary = "a Medium export zip: published posts (drafts, claps, bookmarks and highlights left out; CLI only)"

    @classmethod
    def claims(cls, target: str, path: Path | None) -> bool:
        names = zip_names(path)  # posts/*.html without Substack's posts.csv beside them
        return bool(_post_files(names)) and not any(PurePosixPath(n).name == "posts.csv" for n in names)

    def crawl(self, target: str, author: str) -> Iterator[Item]:
        with BoundedZip(target, self.max_bytes, WHAT) as archive:
            posts = _post_files(archive.names())
            if not posts:
                raise ParseError(target, f"the zip has no posts/*.html: not {WHAT}")
            for name in posts:
                if PurePosixPath(name).name.startswith("draft"):
                    continue  # a draft is not published writing
                try:
                    document = self._post(archive, name, author)
                except CrawlError as exc:
                    yield exc
                    continue
                if document is not None:
                    yield document

    def _post(self, archive: BoundedZip, name: str, author: str) -> RawDocument | None:
        import lxml.html

        where = f"{archive.name}#{name}"
        try:
            root = lxml.html.fromstring(archive.read(name))
        except (ValueError, lxml.etree.ParserError) as exc:
            raise ParseError(where, f"the post's HTML does not parse: {exc}") from None
        if not root.xpath("//*[contains(concat(' ', normalize-space(@class), ' '), ' h-entry ')]"):
            raise ParseError(where, "no h-entry article in it: not a post of a Medium export")
        title = _first_text(root, "p-name") or PurePosixPath(name).stem
        body = root.xpath("//*[contains(concat(' ', normalize-space(@class), ' '), ' e-content ')]")
        text = html_text(lxml.html.tostring(body[0])) if body else ""
        # Medium repeats the title (and often the subtitle) as the body's first headings.
        text = re.sub(rf"\A#{{1,6}} {re.escape(title)}\s*", "", text)
        if not text.strip():
            raise ParseError(where, "the post has no body text")
        published = root.xpath("//time[contains(@class, 'dt-published')]/@datetime")
        canonical = root.xpath("//a[contains(@class, 'p-canonical')]/@href")
        link = canonical[0].strip() if canonical else ""
        source = link or archive_link("medium", PurePosixPath(name).stem)
        return RawDocument.create(author=author, category="article", source=source, link=source, title=title,
                                  text=text, published=published[0] if published else None, platform="medium.com")


def _first_text(root, css_class: str) -> str:
    found = root.xpath(f"//*[contains(concat(' ', normalize-space(@class), ' '), ' {css_class} ')]")
    return " ".join(found[0].text_content().split()) if found else ""
