"""The raw-document warehouse: one JSON file per document in an fsspec location.

Layout: ``<root>/<author-slug>/<category>/<document-id>.json``. A local folder by default,
``s3://...`` (or any fsspec URI) in a cluster. Writes go to a temporary name first and are then
moved into place, so an interrupted crawl never leaves a half-written document behind.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Iterator
from typing import Literal

import fsspec

from .documents import CATEGORIES, RawDocument, author_slug

PutOutcome = Literal["stored", "updated", "unchanged"]


class Warehouse:
    def __init__(self, uri: str, storage_options: dict | None = None):
        self.uri = uri
        self.fs, self.root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, author: str, category: str, doc_id: str) -> str:
        return posixpath.join(self.root, author_slug(author), category, f"{doc_id}.json")

    def _find(self, doc_id: str, author: str | None = None) -> str | None:
        slugs = [author_slug(author)] if author else self.author_slugs()
        for slug in slugs:
            for category in CATEGORIES:
                path = posixpath.join(self.root, slug, category, f"{doc_id}.json")
                if self.fs.exists(path):
                    return path
        return None

    def put(self, doc: RawDocument) -> PutOutcome:
        """Store a document; an unchanged one is left alone, a changed one replaced."""
        path = self._path(doc.author, doc.category, doc.id)
        existing = self._find(doc.id, doc.author)
        if existing:
            old = self._read(existing)
            if old.content_hash == doc.content_hash and old.category == doc.category:
                return "unchanged"
        self._write_atomic(path, doc.model_dump_json(indent=1))
        if existing and existing != path:  # the category changed: drop the old copy
            self.fs.rm(existing)
        return "updated" if existing else "stored"

    def _write_atomic(self, path: str, payload: str) -> None:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "w") as handle:
            handle.write(payload)
        self.fs.mv(tmp, path)

    def _read(self, path: str) -> RawDocument:
        with self.fs.open(path, "r") as handle:
            return RawDocument.model_validate(json.load(handle))

    def get(self, doc_id: str) -> RawDocument | None:
        path = self._find(doc_id)
        return self._read(path) if path else None

    def delete(self, doc_id: str) -> bool:
        path = self._find(doc_id)
        if path:
            self.fs.rm(path)
        return bool(path)

    def author_slugs(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return sorted(
            posixpath.basename(p.rstrip("/"))
            for p in self.fs.ls(self.root, detail=False)
            if self.fs.isdir(p)
        )

    def paths(self, author: str | None = None) -> list[str]:
        slugs = [author_slug(author)] if author else self.author_slugs()
        found: list[str] = []
        for slug in slugs:
            found.extend(self.fs.glob(posixpath.join(self.root, slug, "*", "*.json")))
        return sorted(found)

    def documents(self, author: str | None = None) -> Iterator[RawDocument]:
        for path in self.paths(author):
            yield self._read(path)

    def authors(self) -> dict[str, str]:
        """slug -> display name, for every author with at least one document."""
        names: dict[str, str] = {}
        for slug in self.author_slugs():
            for path in self.paths(slug):
                names[slug] = self._read(path).author
                break
        return names
