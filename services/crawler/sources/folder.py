"""A local folder (or single file) of Markdown, text and HTML files -> article documents."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from llm_twin.documents import RawDocument

from ..errors import CrawlError, InvalidTarget
from ..extract import extract_article, read_saved_page
from .base import CrawlContext, Item, LocalSource

TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
_HEADING = re.compile(r"^\s{0,3}#\s+(.+?)\s*#*\s*$", re.MULTILINE)
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


_WIKI_LINK = re.compile(r"!?\[\[([^\]|#]+)(?:#[^\]|]*)?(?:\|([^\]]+))?\]\]")


def markdown_title_and_body(text: str, fallback: str) -> tuple[str, str]:
    title, _, body = markdown_note(text, fallback)
    return title, body


def markdown_note(text: str, fallback: str) -> tuple[str, str | None, str]:
    """A Markdown note (a blog post, an Obsidian or Notion export) -> (title, date, body): front
    matter read for its title and date and left out of the body, wiki-links ``[[Page|alias]]``
    written as the words a reader sees (the alias, else the page)."""
    title, date = fallback, None
    front = _FRONT_MATTER.match(text)
    if front:
        text = text[front.end():]
        found = re.search(r"^title:\s*[\"']?(.+?)[\"']?\s*$", front.group(1), re.MULTILINE)
        if found:
            title = found.group(1)
        dated = re.search(r"^(?:date|created|published):\s*[\"']?(\d{4}-\d{2}-\d{2}[^\"'\n]*)", front.group(1),
                          re.MULTILINE)
        date = dated.group(1).strip() if dated else None
    text = _WIKI_LINK.sub(lambda m: (m.group(2) or m.group(1)).strip(), text)
    heading = _HEADING.search(text)
    if heading and title == fallback:
        title = heading.group(1)
    return title, date, text


def is_page(path: Path) -> bool:
    suffixes = "".join(path.suffixes[-2:]).lower()
    return path.suffix.lower() in TEXT_SUFFIXES | HTML_SUFFIXES or suffixes in {".html.gz", ".htm.gz"}


class FolderSource(LocalSource):
    name = "folder"
    summary = "a local folder or file of Markdown, text and code (CLI only)"
    over_api = False

    @classmethod
    def build(cls, ctx: CrawlContext) -> FolderSource:
        return cls(ctx.max_file_bytes)

    @classmethod
    def claims(cls, target: str, path: Path | None) -> bool:
        return path is not None and (path.is_dir() or not zipfile.is_zipfile(path))

    def __init__(self, max_file_bytes: int = 512 * 1024):
        self.max_file_bytes = max_file_bytes

    def crawl(self, target: str, author: str) -> Iterator[Item]:
        root = Path(target).expanduser()
        if not root.exists():
            raise InvalidTarget(target, "no such file or folder")
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        pages = [p for p in files if is_page(p)]
        if not pages:
            raise InvalidTarget(target, "no Markdown, text or HTML files found (.md .txt .rst .html)")
        for path in pages:
            try:
                yield self._document(path.resolve(), author)
            except CrawlError as exc:
                yield exc

    def _document(self, path: Path, author: str) -> RawDocument:
        if path.stat().st_size > self.max_file_bytes:
            raise InvalidTarget(str(path), f"file larger than {self.max_file_bytes} bytes (raise TWIN_MAX_FILE_BYTES)")
        link = path.as_uri()
        if path.suffix.lower() in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                raise InvalidTarget(str(path), "file is empty")
            title, date, body = markdown_note(text, path.stem.replace("-", " ").replace("_", " "))
            return RawDocument.create(author=author, category="article", source=link, link=link,
                                      title=title, text=body, published=date, platform="local")
        page = extract_article(read_saved_page(path), link)
        return RawDocument.create(author=author, category="article", source=link, link=link,
                                  title=page.title or path.stem, text=page.text, published=page.date,
                                  platform="local")
