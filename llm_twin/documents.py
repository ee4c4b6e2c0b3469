"""The raw document: what every crawler produces and the warehouse stores."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

Category = Literal["article", "post", "thread", "document", "code"]
CATEGORIES: tuple[str, ...] = ("article", "post", "thread", "document", "code")

# A fixed namespace so that ids are the same on every machine and every run.
_ID_NAMESPACE = uuid.UUID("6f1c1c3e-2b7e-4a53-9a53-7f0d1c2b9e11")


def author_slug(name: str) -> str:
    """'Paul Iusztin' -> 'paul-iusztin' (also the model id a twin is served under)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    if not slug:
        raise ValueError(f"author name {name!r} has no letters or digits to make an id from")
    return slug


def document_id(author: str, source: str) -> str:
    """Deterministic id from (author, source): re-crawling the same source hits the same id."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{author_slug(author)}\n{source}"))


def content_hash(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\n\n{text}".encode()).hexdigest()


def web_link(link: str | None) -> str:
    """``link`` when it is an http(s) URL or a stable ``archive://<service>/<id>`` name (a piece
    from an export with no public address), else "": a document's link is shown to readers, so a
    file:, javascript: or data: URL (from a feed, a sitemap, an export or a local path) is never
    stored as one, whichever crawler made the document. Readers get a link to follow only for
    http(s) (the chat page shows an archive:// name as text)."""
    link = (link or "").strip()
    if re.match(r"^archive://[a-z0-9-]+/[^\s]+$", link):
        return link
    return link if re.match(r"^https?://[^\s/?#]+", link, re.IGNORECASE) else ""


def utcnow() -> datetime:
    return datetime.now(UTC)


class RawDocument(BaseModel):
    """One piece of an author's writing as crawled, before cleaning."""

    id: str = Field(description="document_id(author, source)")
    author: str = Field(description="The author's display name, e.g. 'Paul Iusztin'.")
    category: Category
    source: str = Field(description="Where it came from: a URL, or a path inside a repo/export.")
    link: str = Field(description="Where a reader can see it: an http(s) URL, or '' (local files, exports).")
    title: str = ""
    text: str
    published: str | None = Field(None, description="Publication date as found (ISO 8601).")
    platform: str | None = Field(None, description="e.g. medium.com, github.com, linkedin.")
    fetched_at: datetime = Field(default_factory=utcnow)
    content_hash: str = ""

    @property
    def author_slug(self) -> str:
        return author_slug(self.author)

    @classmethod
    def create(cls, *, author: str, category: str, source: str, text: str, title: str = "",
               link: str | None = None, **extra) -> RawDocument:
        """Build a document with its deterministic id and content hash filled in."""
        if not text or not text.strip():
            raise ValueError(f"{source}: no text to store")
        return cls(
            id=document_id(author, source),
            author=author.strip(),
            category=category,
            source=source,
            link=web_link(source if link is None else link),
            title=title.strip(),
            text=text,
            content_hash=content_hash(title.strip(), text),
            **extra,
        )
