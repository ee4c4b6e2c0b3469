"""Documents on the author's disk: PDF (talks, papers, reports) and DOCX, each one document.

PDF text comes from pypdf in page order; a word hyphenated across a line break is joined, and the
lines that repeat at the top or bottom of most pages (running headers, footers, page numbers) are
removed. DOCX comes from python-docx with its headings kept as Markdown headings. An encrypted PDF,
a file that is not what its bytes claim, or one over TWIN_MAX_ARCHIVE_BYTES is reported on its own line.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from llm_twin.documents import RawDocument

from ..errors import InvalidTarget, ParseError
from .archive import ArchiveSource, zip_names
from .base import Item

_HYPHENATED = re.compile(r"(\w)-\n(\w)")
_PAGE_NUMBER = re.compile(r"^\W*(page\s*)?\d+(\s*(of|/)\s*\d+)?\W*$", re.IGNORECASE)


def _checked(target: str, max_bytes: int) -> Path:
    path = Path(target).expanduser()
    if not path.is_file():
        raise InvalidTarget(target, "no such file")
    if path.stat().st_size > max_bytes:
        raise InvalidTarget(target, f"file larger than {max_bytes} bytes (TWIN_MAX_ARCHIVE_BYTES)")
    return path


def clean_pages(pages: list[str]) -> str:
    """Pages' text -> one text: running headers and footers (a first or last line found on at
    least half the pages, page numbers whatever their number) removed, hyphenation undone."""
    split = [[line.strip() for line in page.splitlines() if line.strip()] for page in pages]
    edges = Counter()
    for lines in split:
        for line in {*lines[:2], *lines[-2:]}:
            edges["#" if _PAGE_NUMBER.match(line) else line] += 1
    running = {line for line, n in edges.items() if len(split) >= 3 and n >= len(split) / 2}
    kept = []
    for lines in split:
        body = [line for i, line in enumerate(lines)
                if not ((i < 2 or i >= len(lines) - 2) and (line in running or ("#" in running and
                                                                                _PAGE_NUMBER.match(line))))]
        kept.append("\n".join(body))
    text = "\n".join(kept)
    text = _HYPHENATED.sub(r"\1\2", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


class PdfSource(ArchiveSource):
    name = "pdf"
    summary = "a PDF file (a talk, paper or report): its text in page order (CLI only)"

    @classmethod
    def claims(cls, target: str, path: Path | None) -> bool:
        if path is None or not path.is_file():
            return False
        with path.open("rb") as f:
            return f.read(5) == b"%PDF-"

    def crawl(self, target: str, author: str) -> Iterator[Item]:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        path = _checked(target, self.max_bytes)
        try:
            reader = PdfReader(str(path))
            if reader.is_encrypted:
                raise ParseError(target, "the PDF is encrypted: export an unencrypted copy to import it")
            pages = [page.extract_text() or "" for page in reader.pages]
            meta = reader.metadata or {}
        except PdfReadError as exc:
            raise ParseError(target, f"not a readable PDF: {exc}") from None
        text = clean_pages(pages)
        if not text:
            raise ParseError(target, "the PDF has no text layer (a scan?): nothing to import")
        title = str(meta.get("/Title") or "").strip() or text.splitlines()[0][:120]
        created = str(meta.get("/CreationDate") or "")
        published = f"{created[2:6]}-{created[6:8]}-{created[8:10]}" if re.match(r"D:\d{8}", created) else None
        yield RawDocument.create(author=author, category="document", source=path.resolve().as_uri(), link="",
                                 title=title, text=text, published=published, platform="local")


class DocxSource(ArchiveSource):
    name = "docx"
    summary = "a Word document (.docx): its text with headings kept (CLI only)"

    @classmethod
    def claims(cls, target: str, path: Path | None) -> bool:
        return "word/document.xml" in zip_names(path)

    def crawl(self, target: str, author: str) -> Iterator[Item]:
        import zipfile

        import docx

        path = _checked(target, self.max_bytes)
        try:
            with zipfile.ZipFile(path) as archive:  # a bomb inside a .docx is refused like any other
                if sum(i.file_size for i in archive.infolist()) > self.max_bytes:
                    raise ParseError(target, f"the document decompresses to more than {self.max_bytes} bytes")
            document = docx.Document(str(path))
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise ParseError(target, f"not a readable .docx: {exc}") from None
        blocks, first_heading = [], ""
        for paragraph in document.paragraphs:
            text = " ".join(paragraph.text.split())
            if not text:
                continue
            style = (paragraph.style.name if paragraph.style is not None else "") or ""
            level = re.match(r"Heading (\d)", style)
            if style == "Title" or level:
                first_heading = first_heading or text
                blocks.append("#" * (int(level.group(1)) if level else 1) + " " + text)
            elif style.startswith("List"):
                blocks.append(f"- {text}")
            else:
                blocks.append(text)
        if not blocks:
            raise ParseError(target, "the document has no text")
        props = document.core_properties
        title = (props.title or "").strip() or first_heading or path.stem
        published = (props.created or props.modified)
        yield RawDocument.create(author=author, category="document", source=path.resolve().as_uri(), link="",
                                 title=title, text="\n\n".join(blocks),
                                 published=published.date().isoformat() if published else None, platform="local")
