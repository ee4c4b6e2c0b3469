"""Every source type against fixtures served on 127.0.0.1, through the real crawler and warehouse."""

from __future__ import annotations

import csv
import io
import subprocess
import zipfile
from pathlib import Path

import pytest

from llm_twin.warehouse import Warehouse
from services.crawler.core import Crawler
from services.crawler.fetch import Fetcher
from services.crawler.guard import AddressGuard
from tests.fixtures_pages import PARAGRAPHS, article_html, serve_blog

AUTHOR = "Ada Writer"


@pytest.fixture
def warehouse(tmp_path) -> Warehouse:
    return Warehouse(str(tmp_path / "warehouse"))


@pytest.fixture
def crawler(warehouse):
    # The fixture sites run on 127.0.0.1, which the crawler refuses unless it is allowed by name.
    fetcher = Fetcher(timeout_s=5, retries=2, backoff_s=0.01, max_bytes=200_000, guard=AddressGuard(["127.0.0.0/8"]))
    yield Crawler(warehouse, fetcher, allow_insecure_git=True)  # the fixture git server speaks http
    fetcher.close()


def statuses(report) -> list[str]:
    return sorted(o.status for o in report.outcomes)


def test_article_page_is_extracted_without_chrome(site, crawler, warehouse):
    urls = serve_blog(site)
    report = crawler.crawl([urls["sourdough"]], AUTHOR)
    assert statuses(report) == ["stored"]
    (doc,) = list(warehouse.documents())
    assert doc.category == "article" and doc.author == AUTHOR and doc.link == urls["sourdough"]
    assert doc.title == "Sourdough"
    assert "float test" in doc.text
    assert "Subscribe" not in doc.text and "All rights reserved" not in doc.text and "unrelated links" not in doc.text


@pytest.mark.parametrize("feed", ["rss", "atom", "sitemap"])
def test_feeds_and_sitemaps_crawl_every_page(site, crawler, warehouse, feed):
    urls = serve_blog(site)
    report = crawler.crawl([urls[feed]], AUTHOR)
    assert statuses(report) == ["stored"] * 3
    assert {d.link for d in warehouse.documents()} == {urls[s] for s in PARAGRAPHS}


def test_recrawl_is_unchanged_then_updated_when_the_page_changes(site, crawler, warehouse):
    urls = serve_blog(site)
    crawler.crawl([urls["rss"]], AUTHOR)
    assert statuses(crawler.crawl([urls["rss"]], AUTHOR)) == ["unchanged"] * 3
    site.add("/posts/kubernetes.html", article_html("Kubernetes", PARAGRAPHS["kubernetes"] + [
        "A finalizer lets the operator clean up external resources before the object disappears."]))
    assert statuses(crawler.crawl([urls["rss"]], AUTHOR)) == ["unchanged", "unchanged", "updated"]
    assert len(list(warehouse.documents())) == 3
    assert "finalizer" in next(d for d in warehouse.documents() if d.link == urls["kubernetes"]).text


def test_one_broken_feed_entry_is_reported_and_the_rest_crawled(site, crawler):
    urls = serve_blog(site, broken="missing-post")
    report = crawler.crawl([urls["rss"]], AUTHOR)
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert len(failed) == 1 and "missing-post" in failed[0].target and "HTTP 404" in failed[0].detail
    assert report.count("stored") == 3 and report.ok


def test_retries_a_flaky_server(site, crawler):
    page = article_html("Flaky", PARAGRAPHS["sourdough"])
    site.routes["/flaky.html"] = lambda n: (503, "text/plain", "busy") if n < 2 else (200, "text/html", page)
    report = crawler.crawl([site.url + "/flaky.html"], AUTHOR)
    assert statuses(report) == ["stored"] and site.hits["/flaky.html"] == 2


def test_robots_txt_is_obeyed(site, crawler):
    site.add("/robots.txt", "User-agent: *\nDisallow: /private/\n", "text/plain")
    site.add("/private/post.html", article_html("Secret", PARAGRAPHS["sourdough"]))
    report = crawler.crawl([site.url + "/private/post.html"], AUTHOR)
    assert report.outcomes[0].status == "failed" and "robots.txt" in report.outcomes[0].detail
    assert "/private/post.html" not in site.hits


@pytest.mark.parametrize("target,reason", [
    ("ftp://127.0.0.1/file.html", "not an http(s) URL"),
    ("http://127.0.0.1:9/nothing-listens-here", "unreachable"),
    ("/definitely/not/a/path", "no such file"),
])
def test_bad_targets_fail_with_a_reason_naming_them(crawler, warehouse, target, reason):
    report = crawler.crawl([target], AUTHOR)
    (outcome,) = report.outcomes
    assert outcome.status == "failed" and outcome.target == target and reason in outcome.detail
    assert not report.ok and list(warehouse.documents()) == []


def test_malformed_feed_and_oversized_page_and_empty_page(site, crawler, warehouse):
    bad_feed = site.add("/bad.xml", "<rss><channel><item><title>oops", "application/rss+xml")
    big = site.add("/big.html", "<html><body>" + "<p>word </p>" * 50_000 + "</body></html>")
    empty = site.add("/empty.html", "<html><body><nav>Home</nav></body></html>")
    report = crawler.crawl([bad_feed, big, empty], AUTHOR)
    details = {o.target: o.detail for o in report.outcomes}
    assert "feed" in details[bad_feed]
    assert "byte cap" in details[big] and "TWIN_HTTP_MAX_BYTES" in details[big]
    assert "no article text" in details[empty]
    assert list(warehouse.documents()) == [] and list(Path(warehouse.root).rglob("*.tmp")) == []


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "served" / "tools"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "retry.py").write_text("def retry(fn, times=3):\n    for _ in range(times):\n        try:\n"
                                           "            return fn()\n        except OSError:\n            pass\n")
    (repo / "README.md").write_text("# Tools\n\nSmall helpers for crawling politely.\n")
    (repo / "package-lock.json").write_text('{"lockfileVersion": 3}')
    (repo / "vendor").mkdir()
    (repo / "vendor" / "lib.py").write_text("x = 1\n")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (repo / ".gitignore").write_text("secrets.txt\n")
    (repo / "secrets.txt").write_text("password=hunter2\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    return repo


def test_local_git_repository(crawler, warehouse, repo):
    report = crawler.crawl([str(repo)], AUTHOR)
    assert statuses(report) == ["stored", "stored"]
    titles = {d.title for d in warehouse.documents()}
    assert titles == {"tools/README.md", "tools/src/retry.py"}
    assert all(d.category == "code" for d in warehouse.documents())


def test_git_repository_over_http(site, crawler, warehouse, repo, tmp_path):
    bare = tmp_path / "tools.git"  # the site serves tmp_path: a bare repo over git's dumb HTTP protocol
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    report = crawler.crawl([f"{site.url}/tools.git"], AUTHOR)
    assert statuses(report) == ["stored", "stored"]
    assert {d.link for d in warehouse.documents()} == {f"{site.url}/tools#README.md", f"{site.url}/tools#src/retry.py"}


def test_folder_of_markdown_text_and_html(tmp_path, crawler, warehouse):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.md").write_text("---\ntitle: Ideas for spring\n---\nPlant peas early; they like the cold.\n")
    (notes / "log.txt").write_text("Shipped the crawler today.\n")
    (notes / "page.html").write_text(article_html("Saved page", PARAGRAPHS["vector-databases"]))
    (notes / "image.jpg").write_bytes(b"\xff\xd8")
    report = crawler.crawl([str(notes)], AUTHOR)
    assert statuses(report) == ["stored"] * 3
    assert {d.title for d in warehouse.documents()} == {"Ideas for spring", "log", "Saved page"}


def test_linkedin_export(tmp_path, crawler, warehouse):
    shares = io.StringIO()
    writer = csv.writer(shares)
    writer.writerow(["Date", "ShareLink", "ShareCommentary", "SharedUrl", "MediaUrl", "Visibility"])
    writer.writerow(["2024-03-01 10:00:00", "https://www.linkedin.com/feed/update/urn:li:activity:1",
                     "Retrieval beats memorisation.\nIndex your notes, then ask them.", "", "", "MEMBER_NETWORK"])
    writer.writerow(["2024-03-02 10:00:00", "https://www.linkedin.com/feed/update/urn:li:activity:2", "", "", "", ""])
    export = tmp_path / "Basic_LinkedInDataExport.zip"
    with zipfile.ZipFile(export, "w") as archive:
        archive.writestr("Shares.csv", shares.getvalue())
        archive.writestr("Articles/Articles/on-operators.html", article_html("On operators", PARAGRAPHS["kubernetes"]))
    report = crawler.crawl([str(export)], AUTHOR)
    assert statuses(report) == ["stored", "stored"]
    by_category = {d.category: d for d in warehouse.documents()}
    assert by_category["post"].link.endswith("activity:1") and "Index your notes" in by_category["post"].text
    assert by_category["article"].title == "On operators"


def test_a_zip_that_is_not_an_export_is_rejected(tmp_path, crawler):
    other = tmp_path / "photos.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("a.txt", "hello")
    (outcome,) = crawler.crawl([str(other)], AUTHOR).outcomes
    assert outcome.status == "failed" and "not a LinkedIn data export" in outcome.detail
