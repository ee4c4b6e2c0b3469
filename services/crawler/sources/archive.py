"""What the archive sources share: a zip read with every member's size bounded, and the HTML of an
exported post turned into text that keeps its structure (headings, lists, code blocks) for chunking.

Exports are read, never trusted: a member's declared size is checked before it is read and the
bytes actually inflated are counted, since a crafted zip can declare one size and inflate to
another (a zip bomb is refused, not unpacked); a zip listing more members than any export holds is
refused before anything is read.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import InvalidTarget, ParseError
from .base import CrawlContext, LocalSource

MAX_MEMBERS = 100_000  # an export holds a few thousand files; a million entries is a zip bomb's table


class ArchiveSource(LocalSource):
    """Defaults of a source that reads one local file (an export or a document) within
    TWIN_MAX_ARCHIVE_BYTES; never offered over the API (it reads the server's files)."""

    over_api = False

    def __init__(self, max_bytes: int = 200 * 1024 * 1024):
        self.max_bytes = max_bytes

    @classmethod
    def build(cls, ctx: CrawlContext):
        return cls(ctx.max_archive_bytes)


class BoundedZip:
    """A zip whose members are read within ``max_bytes`` decompressed, all together."""

    def __init__(self, target: str, max_bytes: int, what: str):
        path = Path(target).expanduser()
        if not path.is_file():
            raise InvalidTarget(target, f"no such file (expected {what})")
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise ParseError(target, f"not a zip file (expected {what})") from exc
        if len(self.zip.infolist()) > MAX_MEMBERS:
            self.zip.close()
            raise ParseError(target, f"the zip lists more than {MAX_MEMBERS} files: not {what}")
        self.target, self.name, self.max_bytes, self.read_bytes = target, path.name, max_bytes, 0

    def names(self) -> list[str]:
        return [i.filename for i in self.zip.infolist() if not i.is_dir()]

    def read(self, member: str) -> bytes:
        info = self.zip.getinfo(member)
        left = self.max_bytes - self.read_bytes
        too_big = f"the archive decompresses to more than {self.max_bytes} bytes (TWIN_MAX_ARCHIVE_BYTES)"
        if info.file_size > left:
            raise ParseError(f"{self.target}#{member}", too_big)
        with self.zip.open(info) as stream:
            data = stream.read(left + 1)
        self.read_bytes += len(data)
        if self.read_bytes > self.max_bytes:
            raise ParseError(f"{self.target}#{member}", too_big)
        return data

    def __enter__(self) -> BoundedZip:
        return self

    def __exit__(self, *exc) -> None:
        self.zip.close()


def zip_names(path: Path | None) -> list[str]:
    """A local zip's member names (for detection), [] for anything else."""
    if path is None or not path.is_file() or not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()[:MAX_MEMBERS]
    except (zipfile.BadZipFile, OSError):
        return []


def archive_link(platform: str, key: str) -> str:
    """A stable source for a piece with no public link: the same piece in a newer export keeps it."""
    return f"archive://{platform}/{key}"


_BLOCKS = {"p", "li", "blockquote", "figcaption", "div", "section", "article", "pre", "h1", "h2", "h3", "h4", "h5",
           "h6", "ul", "ol", "table", "tr"}


_PARAGRAPHS = {"p", "li", "blockquote", "figcaption", "div", "section", "article", "td", "body"}


def html_text(html: str | bytes) -> str:
    """An exported post's HTML -> text: headings as Markdown headings, list items as "- ", code
    blocks fenced, paragraphs separated by blank lines; scripts and styles dropped."""
    import lxml.html

    root = lxml.html.fromstring(html if isinstance(html, bytes) else html.encode("utf-8"))
    for bad in root.xpath("//script|//style|//noscript"):
        bad.drop_tree()
    blocks: list[str] = []

    def walk(node) -> None:
        tag = node.tag if isinstance(node.tag, str) else ""
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            text = " ".join(node.text_content().split())
            if text:
                blocks.append("#" * int(tag[1]) + " " + text)
            return
        if tag == "pre":
            code = node.text_content().strip("\n")
            if code.strip():
                blocks.append(f"```\n{code}\n```")
            return
        nested = any(isinstance(c.tag, str) and c.tag in _BLOCKS for c in node)
        if tag in _PARAGRAPHS and not nested:
            text = " ".join(node.text_content().split())
            if text:
                blocks.append(("- " if tag == "li" else "> " if tag == "blockquote" else "") + text)
            return
        for child in node:
            walk(child)

    walk(root)
    return "\n\n".join(blocks)
