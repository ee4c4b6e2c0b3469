"""Hostile web content against the real crawler: decompression bombs on every path that fetches
(pages, feeds, sitemaps, robots.txt), servers that dribble, sitemap indexes without end, links
that are not http(s), and addresses the IANA registries call not globally reachable. Memory is
measured (tracemalloc), not assumed."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import tracemalloc
import zipfile
import zlib

import pytest

from llm_twin.warehouse import Warehouse
from services.crawler.core import Crawler
from services.crawler.decode import BoundedDecoder, TooLargeBody, UnsupportedEncoding
from services.crawler.errors import FetchError
from services.crawler.fetch import Fetcher
from services.crawler.guard import AddressGuard
from services.crawler.sources.linkedin import LinkedInExportSource
from tests.fixtures_pages import article_html

CAP = 1024 * 1024


def double_gzip(size: int) -> bytes:
    """``size`` zero bytes, gzipped twice: a few KB on the wire."""
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = inner.compress(b"\0" * size) + inner.flush()
    return gzip.compress(data, 9)


@pytest.fixture
def crawler(tmp_path):
    fetcher = Fetcher(timeout_s=5, retries=0, backoff_s=0.01, max_bytes=CAP, guard=AddressGuard(["127.0.0.0/8"]),
                      page_deadline_s=3)
    yield Crawler(Warehouse(str(tmp_path / "wh")), fetcher, max_children=3, max_pages=20)
    fetcher.close()


def peak_growth(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("encoding", ["gzip, gzip", "gzip,gzip", "x-gzip, gzip"])
def test_a_double_gzip_bomb_is_refused_before_it_grows(site, crawler, encoding):
    bomb = double_gzip(512 * 1024 * 1024)  # 512 MiB decoded
    assert len(bomb) < 1_000_000
    url = site.add("/bomb", bomb, headers={"Content-Encoding": encoding})
    errors = []
    peak = peak_growth(lambda: errors.append(pytest.raises(FetchError, crawler.fetcher.get, url)))
    assert "decodes to more than" in str(errors[0].value) or "exceeds" in str(errors[0].value)
    assert peak < 8 * CAP, f"decoding grew memory by {peak / 1e6:.0f} MB"


def test_every_fetching_path_is_bounded(site, crawler):
    bomb = double_gzip(256 * 1024 * 1024)
    site.add("/robots.txt", bomb, "text/plain", headers={"Content-Encoding": "gzip, gzip"})
    feed = site.add("/feed.xml", bomb, "application/rss+xml", headers={"Content-Encoding": "gzip, gzip"})
    sitemap = site.add("/sitemap.xml", bomb, "application/xml", headers={"Content-Encoding": "gzip"})
    report = []
    peak = peak_growth(lambda: report.append(crawler.crawl([feed, sitemap], "Ada")))
    assert [o.status for o in report[0].outcomes] == ["failed", "failed"]
    assert peak < 8 * CAP


def test_ordinary_gzip_and_deflate_still_work(site, crawler):
    html = article_html("Sourdough", "A starter is flour and water left to ferment. " * 40).encode()
    gz = site.add("/gz", gzip.compress(html), headers={"Content-Encoding": "gzip"})
    raw_deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    df = site.add("/df", raw_deflate.compress(html) + raw_deflate.flush(), headers={"Content-Encoding": "deflate"})
    assert crawler.fetcher.get(gz).body == html
    assert crawler.fetcher.get(df).body == html


def test_decoder_bounds_each_layer_and_refuses_unknown_encodings():
    with pytest.raises(UnsupportedEncoding, match="br"):
        BoundedDecoder("br", CAP)
    with pytest.raises(UnsupportedEncoding, match="stacked"):
        BoundedDecoder("gzip, gzip, gzip, gzip", CAP)
    decoder = BoundedDecoder("gzip", 1000)
    with pytest.raises(TooLargeBody):
        decoder.feed(gzip.compress(b"x" * 5000)) + decoder.flush()
    exact = BoundedDecoder("gzip", 1000)
    assert exact.feed(gzip.compress(b"x" * 1000)) + exact.flush() == b"x" * 1000


class Dribble:
    """A server that answers one byte every ``every`` seconds, forever (read timeouts never trip)."""

    def __init__(self, every: float = 0.5, headers_first: bool = True):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow"
        self.every, self.headers_first, self.open = every, headers_first, True
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while self.open:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn):
        try:
            if b"/robots.txt" in conn.recv(65536).split(b"\r\n", 1)[0]:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100000\r\n\r\n"
            if self.headers_first:
                conn.sendall(head)
                head = b"<html>" + b"a" * 100000
            for byte in head:
                if not self.open:
                    break
                conn.sendall(bytes([byte]))
                time.sleep(self.every)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.open = False
        self.sock.close()


@pytest.mark.parametrize("headers_first", [True, False], ids=["body", "headers"])
def test_a_server_dribbling_bytes_is_cut_at_the_page_deadline(crawler, headers_first):
    server = Dribble(every=0.3, headers_first=headers_first)
    try:
        started = time.monotonic()
        with pytest.raises(FetchError, match="TWIN_CRAWL_PAGE_DEADLINE_S"):
            crawler.fetcher.get(server.url)
        assert time.monotonic() - started < 3 + 2, "the page deadline (3 s) did not hold"
    finally:
        server.close()


def test_the_crawl_deadline_stops_parsing_and_fetching(site, tmp_path):
    fetcher = Fetcher(timeout_s=5, retries=0, guard=AddressGuard(["127.0.0.0/8"]), page_deadline_s=30)
    crawler = Crawler(Warehouse(str(tmp_path / "wh")), fetcher, deadline_s=2, max_pages=10_000)
    server = Dribble(every=0.3)
    pages = "".join(f"<url><loc>{server.url}?{i}</loc></url>" for i in range(50))
    sitemap = site.add("/sitemap.xml", f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{pages}</urlset>',
                       "application/xml")
    try:
        started = time.monotonic()
        report = crawler.crawl([sitemap], "Ada", "sitemap")
        assert time.monotonic() - started < 2 + 3
        assert any("deadline" in o.detail for o in report.outcomes)
    finally:
        server.close()
        fetcher.close()


def test_a_sitemap_index_reads_a_bounded_number_of_children(site, crawler):
    children = "".join(f"<sitemap><loc>{site.url}/child{i}.xml</loc></sitemap>" for i in range(200))
    index = site.add("/index.xml", f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{children}'
                                   "</sitemapindex>", "application/xml")
    for i in range(200):
        urls = "".join(f"<url><loc>{site.url}/p{i}-{j}</loc></url>" for j in range(100))
        site.add(f"/child{i}.xml", f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>',
                 "application/xml")
    report = crawler.crawl([index], "Ada", "sitemap")
    fetched_children = sum(1 for path in site.hits if path.startswith("/child"))
    assert fetched_children <= 3
    assert any("TWIN_SITEMAP_MAX_CHILDREN" in o.detail for o in report.outcomes)
    pages = sum(1 for path in site.hits if path.startswith("/p"))
    assert pages <= 20  # max_pages


def test_only_http_links_are_followed_or_stored(site, crawler):
    body = "Bread wants time, warmth and a little patience. " * 30
    page = site.add("/real", article_html("Real", body))
    feed = site.add("/feed.xml", f"""<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
        <item><title>js</title><link>javascript:alert(1)</link></item>
        <item><title>file</title><link>file:///etc/passwd</link></item>
        <item><title>real</title><link>{page}</link></item></channel></rss>""", "application/rss+xml")
    report = crawler.crawl([feed], "Ada", "feed")
    assert [o.status for o in report.outcomes] == ["stored"]
    assert {d.link for d in crawler.warehouse.documents()} == {page}


def test_local_and_export_documents_store_no_link(tmp_path, crawler):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("A note on proofing dough overnight in the fridge, slowly.\n")
    crawler.crawl([str(notes)], "Ada", "folder")
    export = tmp_path / "export.zip"
    with zipfile.ZipFile(export, "w") as z:
        z.writestr("Shares.csv", 'Date,ShareLink,ShareCommentary\n2024-01-01,javascript:alert(1),"Hello world post"\n')
    crawler.crawl([str(export)], "Ada", "linkedin-export")
    links = {d.link for d in crawler.warehouse.documents()}
    assert links == {""}, links


def test_a_zip_bomb_export_is_refused_by_its_decompressed_size(tmp_path):
    export = tmp_path / "bomb.zip"
    with zipfile.ZipFile(export, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Shares.csv", "Date,ShareLink,ShareCommentary\n" + "0" * (64 * 1024 * 1024))
    assert export.stat().st_size < 200_000
    errors = []

    def crawl():
        with pytest.raises(Exception, match="TWIN_MAX_ARCHIVE_BYTES") as raised:
            list(LinkedInExportSource(max_bytes=4 * CAP).crawl(str(export), "Ada"))
        errors.append(raised)

    assert peak_growth(crawl) < 16 * CAP and errors


def test_a_zip_member_lying_about_its_size_is_still_bounded(tmp_path):
    export = tmp_path / "liar.zip"
    with zipfile.ZipFile(export, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Shares.csv", "Date,ShareLink,ShareCommentary\n" + "0" * (8 * 1024 * 1024))
    data = bytearray(export.read_bytes())
    # Rewrite the declared uncompressed size (local header and central directory) to 100 bytes.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset:at + offset + 4] = (100).to_bytes(4, "little")
    export.write_bytes(bytes(data))
    items = []
    peak = peak_growth(lambda: items.extend(_safely(LinkedInExportSource(max_bytes=CAP).crawl(str(export), "Ada"))))
    assert peak < 16 * CAP


def _safely(items):
    try:
        yield from items
    except Exception as exc:  # noqa: BLE001 - a refusal is a fine outcome here; memory is what is measured
        yield exc


@pytest.mark.parametrize("address", [
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "2002:7f00:1::1", "2002:a00:1::",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "::127.0.0.1", "::ffff:169.254.169.254", "192.0.0.1", "192.0.0.170", "198.18.0.1", "192.88.99.1", "240.0.0.1",
    "255.255.255.255", "100::1", "2001:db8::1", "3fff::1", "5f00::1", "4000::1", "ff02::1", "0.0.0.0", "::",
])
def test_the_guard_refuses_what_the_registries_call_not_global(address):
    assert AddressGuard().refusal(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808",
                                     "192.0.0.9", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_the_guard_lets_global_addresses_through(address):
    assert AddressGuard().refusal(address) is None


def test_git_is_https_only_without_the_flag(tmp_path, crawler):
    plain = Crawler(crawler.warehouse, crawler.fetcher)
    for remote in ("git://example.com/a.git", "ssh://git@example.com/a.git", "http://example.com/a.git",
                   "git@example.com:a/b.git"):
        report = plain.crawl([remote], "Ada", "git")
        assert report.outcomes[0].status == "failed" and "https:// only" in report.outcomes[0].detail, remote
