"""The crawler's source registry: one class per source, registered once; the CLI's choices, the
API's source_type, the proto's documentation and auto-detection all follow it."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from llm_twin.config import Settings
from llm_twin.documents import RawDocument
from services.crawler import sources as registry
from services.crawler.core import Crawler
from services.crawler.errors import InvalidTarget
from services.crawler.fetch import Response
from services.gateway.dataplane import api_crawl_target
from services.gateway.status import InvalidRequest

ROOT = Path(__file__).resolve().parents[2]


def test_the_proto_and_the_cli_name_the_registered_sources():
    comment = re.search(r"string source_type = 3;\s*//(.*)", (ROOT / "protos/twin/v1/crawler.proto").read_text())
    named = {part.strip().split()[0] for part in comment.group(1).split("|")}
    assert named == set(registry.SOURCE_TYPES)
    from twin_cli.data_commands import crawl

    choices = next(p for p in crawl.params if p.name == "source").type.choices
    assert tuple(choices) == registry.SOURCE_TYPES


@pytest.fixture
def crawler(tmp_path) -> Crawler:
    return Crawler.from_settings(Settings(data_dir=tmp_path / "twin"))


def test_detection_follows_the_registry(crawler, tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    export = tmp_path / "export.zip"
    with zipfile.ZipFile(export, "w") as z:
        z.writestr("Shares.csv", "Date,ShareCommentary\n")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("notes.txt", "hi")
    (tmp_path / "post.md").write_text("# Hi\n\ntext")
    assert crawler.detect(str(repo)) == "git"
    assert crawler.detect(str(export)) == "linkedin-export"
    assert crawler.detect(str(tmp_path / "post.md")) == "folder"
    assert crawler.detect("https://example.org/me/notes.git") == "git"
    assert crawler.detect("https://example.org/post") == "web"
    with pytest.raises(InvalidTarget, match="not a LinkedIn data export"):
        crawler.detect(str(other))

    def sniffed(body: bytes, kind: str = "text/html") -> str:
        response = Response("https://example.org/x", 200, kind, body)
        return next(n for n, cls in registry.SOURCES.items() if cls.web and cls.sniff(response))

    assert sniffed(b"<?xml version='1.0'?><urlset>") == "sitemap"
    assert sniffed(b"<rss version='2.0'>") == "feed"
    assert sniffed(b"<html><body>hi</body></html>") == "article"


def test_what_reads_server_files_is_not_offered_over_the_api():
    assert set(registry.SOURCE_TYPES) - set(registry.API_SOURCE_TYPES) == {
        "folder", "linkedin-export", "medium-export", "substack-export", "x-archive", "pdf", "docx"}
    with pytest.raises(InvalidRequest, match="reads server files"):
        api_crawl_target("https://example.org/x", "folder")


def test_a_new_source_is_one_class_and_one_registration(monkeypatch, tmp_path):
    """What DEVELOPERS.md shows: a class with its detection, one line in SOURCES."""

    class NotesSource(registry.base.LocalSource):
        name, summary, over_api = "notes", "a .notes file", False

        @classmethod
        def build(cls, ctx):
            return cls()

        @classmethod
        def claims(cls, target, path):
            return path is not None and path.suffix == ".notes"

        def crawl(self, target, author):
            text = Path(target).read_text()
            yield RawDocument.create(author=author, category="post", source=target, text=text, title="notes")

    monkeypatch.setattr(registry, "SOURCES", {"notes": NotesSource, **registry.SOURCES})
    monkeypatch.setattr("services.crawler.core.SOURCES", registry.SOURCES)
    monkeypatch.setattr("services.crawler.core.SOURCE_TYPES", ("auto", *registry.SOURCES))
    note = tmp_path / "today.notes"
    note.write_text("Shipping the registry today.")
    crawler = Crawler.from_settings(Settings(data_dir=tmp_path / "twin"))
    assert crawler.detect(str(note)) == "notes"
    report = crawler.crawl([str(note)], "Mara Quill")
    assert [o.status for o in report.outcomes] == ["stored"]
