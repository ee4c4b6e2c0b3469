"""Import the LLM Engineer's Handbook warehouse export (its MongoDB collections as JSON lists).

Users of that system move over with `twin import-handbook DIR`: ArticleDocument.json,
UserDocument.json and, when present, PostDocument.json and RepositoryDocument.json. Each
document keeps its link.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from .documents import RawDocument
from .warehouse import Warehouse

FILES = {"ArticleDocument.json": "article", "PostDocument.json": "post", "RepositoryDocument.json": "code"}


class HandbookImportError(ValueError):
    pass


def _load(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HandbookImportError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, list):
        raise HandbookImportError(f"{path}: expected a JSON list of documents")
    return data


def _authors(directory: Path) -> dict[str, str]:
    users = directory / "UserDocument.json"
    if not users.exists():
        return {}
    return {u["_id"]: f"{u.get('first_name', '')} {u.get('last_name', '')}".strip() for u in _load(users)}


def _documents(directory: Path) -> Iterator[RawDocument]:
    names = _authors(directory)
    for filename, category in FILES.items():
        path = directory / filename
        if not path.exists():
            continue
        for record in _load(path):
            author = record.get("author_full_name") or names.get(record.get("author_id", ""), "")
            if not author:
                raise HandbookImportError(f"{path}: document {record.get('_id')} has no author")
            content = record.get("content") or {}
            link = record.get("link") or f"handbook:{record.get('_id')}"
            if category == "code":
                # A repository document maps file path -> file content: one code document per file.
                name = record.get("name") or link
                for file_path, text in sorted(content.items()):
                    if isinstance(text, str) and text.strip():
                        yield RawDocument.create(author=author, category="code", source=f"{link}#{file_path}",
                                                 link=link, title=f"{name}/{file_path}", text=text,
                                                 platform=record.get("platform") or urlsplit(link).hostname)
                continue
            title = content.get("Title") or ""
            subtitle = content.get("Subtitle") or ""
            text = content.get("Content") or content.get("text") or ""
            if subtitle and subtitle not in text[:500]:
                text = f"{subtitle}\n\n{text}"
            if not text.strip():
                continue
            yield RawDocument.create(author=author, category=category, source=link, link=link, title=title,
                                     text=text, platform=record.get("platform") or urlsplit(link).hostname)


def import_handbook(directory: Path, warehouse: Warehouse) -> dict[str, int]:
    """Store every document of the export; -> counts by outcome (stored/updated/unchanged)."""
    if not directory.is_dir():
        raise HandbookImportError(f"{directory}: no such folder")
    if not any((directory / name).exists() for name in FILES):
        raise HandbookImportError(f"{directory}: none of {', '.join(FILES)} found; "
                                  "point at the folder of the handbook's data_warehouse_raw_data export")
    documents = list(_documents(directory))  # parse everything before writing anything
    counts = {"stored": 0, "updated": 0, "unchanged": 0}
    for doc in documents:
        counts[warehouse.put(doc)] += 1
    return counts
