"""Sources reached over HTTP: a single article page, an RSS/Atom feed, a sitemap."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import feedparser
from lxml import etree

from llm_twin.documents import RawDocument

from ..errors import CrawlError, ParseError, Stopped
from ..extract import extract_article
from ..fetch import Fetcher, Response
from .base import CrawlContext, Item, WebSource

SITEMAP_NS = "{http://www.sitemaps.org/schemas/sitemap/0.9}"
# Below this many characters, a feed entry's own content is a teaser, not the article.
MIN_FEED_CONTENT_CHARS = 500


def platform_of(url: str) -> str:
    return urlsplit(url).hostname or ""


def article_document(author: str, url: str, html: bytes | str, title_hint: str = "",
                     published: str | None = None) -> RawDocument:
    page = extract_article(html, url)
    return RawDocument.create(
        author=author, category="article", source=url, link=url,
        title=page.title or title_hint, text=page.text,
        published=page.date or published, platform=platform_of(url),
    )


class ArticleSource(WebSource):
    name = "article"
    summary = "one web page (its main text extracted)"

    def __init__(self, fetcher: Fetcher):
        self.fetcher = fetcher

    @classmethod
    def build(cls, ctx: CrawlContext) -> ArticleSource:
        return cls(ctx.fetcher)

    @classmethod
    def sniff(cls, response: Response) -> bool:
        return True  # any page that is not a feed or a sitemap (registered last of the web sources)

    def crawl(self, target: str, author: str, prefetched: Response | None = None) -> Iterator[Item]:
        response = prefetched or self.fetcher.get(target)
        yield article_document(author, target, response.body)


def _page_items(fetcher: Fetcher, author: str, pages: list[tuple[str, str, str | None, str]]
                ) -> Iterator[Item]:
    """Fetch and extract each (url, title, date, fallback_html) page, one failure at a time."""
    for url, title, date, fallback_html in pages:
        fetcher.checkpoint(url)
        try:
            response = fetcher.get(url)
            yield article_document(author, url, response.body, title, date)
        except Stopped:
            raise
        except CrawlError as exc:
            if len(fallback_html) >= MIN_FEED_CONTENT_CHARS:
                # The feed carries the whole article (Medium, Substack do): use it.
                try:
                    yield article_document(author, url, fallback_html, title, date)
                    continue
                except CrawlError:
                    pass
            yield exc


class FeedSource(WebSource):
    """RSS or Atom: every entry's page (how Medium and Substack are crawled, no browser)."""

    name = "feed"
    summary = "an RSS or Atom feed: every entry's page"

    def __init__(self, fetcher: Fetcher, max_pages: int = 500):
        self.fetcher = fetcher
        self.max_pages = max_pages

    @classmethod
    def build(cls, ctx: CrawlContext) -> FeedSource:
        return cls(ctx.fetcher, ctx.max_pages)

    @classmethod
    def sniff(cls, response: Response) -> bool:
        kind, head = response.content_type.lower(), response.body[:2048].lstrip().lower()
        return b"<rss" in head or b"<feed" in head or b"<rdf:rdf" in head or "rss" in kind or "atom" in kind

    def crawl(self, target: str, author: str, prefetched: Response | None = None) -> Iterator[Item]:
        response = prefetched or self.fetcher.get(target)
        feed = feedparser.parse(response.body)
        if not feed.entries:
            why = f"malformed feed ({feed.bozo_exception})" if feed.bozo else "feed has no entries"
            raise ParseError(target, why)
        pages = []
        for entry in feed.entries[: self.max_pages]:
            self.fetcher.checkpoint(target)
            link = entry.get("link")
            if not link or urlsplit(link).scheme not in ("http", "https"):
                continue  # only http(s) pages are fetched and stored as a document's link
            content = ""
            if entry.get("content"):
                content = max((c.get("value", "") for c in entry.content), key=len)
            content = content or entry.get("summary", "")
            pages.append((link, entry.get("title", ""), entry.get("published"), content))
        if not pages:
            raise ParseError(target, "no entry of the feed has an http(s) link")
        yield from _page_items(self.fetcher, author, pages)


def parse_sitemap(target: str, body: bytes, max_locs: int | None = None,
                  checkpoint=lambda target: None) -> tuple[list[str], list[str]]:
    """-> (page URLs, nested sitemap URLs), at most ``max_locs`` of them (the rest is not read);
    ``checkpoint`` (the crawl's deadline and cancellation) is called as the parser walks."""
    try:
        root = etree.fromstring(body, parser=etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False))
    except etree.XMLSyntaxError as exc:
        raise ParseError(target, f"malformed sitemap XML: {exc}") from exc
    kind = etree.QName(root).localname
    if kind not in ("sitemapindex", "urlset"):
        raise ParseError(target, f"not a sitemap: root element <{kind}>")
    locs: list[str] = []
    for number, el in enumerate(root.iter(f"{SITEMAP_NS}loc", "loc")):
        if number % 256 == 0:
            checkpoint(target)
        text = (el.text or "").strip()
        if urlsplit(text).scheme in ("http", "https"):
            locs.append(text)
            if max_locs is not None and len(locs) >= max_locs:
                break
    return ([], locs) if kind == "sitemapindex" else (locs, [])


class SitemapSource(WebSource):
    name = "sitemap"
    summary = "a sitemap or sitemap index: every page it lists"

    def __init__(self, fetcher: Fetcher, max_pages: int = 500, max_children: int = 50):
        self.fetcher = fetcher
        self.max_pages = max_pages
        self.max_children = max_children

    @classmethod
    def build(cls, ctx: CrawlContext) -> SitemapSource:
        return cls(ctx.fetcher, ctx.max_pages, ctx.max_children)

    @classmethod
    def sniff(cls, response: Response) -> bool:
        head = response.body[:2048].lstrip().lower()
        return b"<urlset" in head or b"<sitemapindex" in head

    def crawl(self, target: str, author: str, prefetched: Response | None = None) -> Iterator[Item]:
        response = prefetched or self.fetcher.get(target)
        check = self.fetcher.checkpoint
        pages, nested = parse_sitemap(target, response.body, self.max_pages, check)
        if len(nested) > self.max_children:
            yield ParseError(target, f"the sitemap index lists more than {self.max_children} sitemaps; the first "
                                     f"{self.max_children} are read (TWIN_SITEMAP_MAX_CHILDREN)")
        seen = set(pages)
        for child in nested[: self.max_children]:  # a sitemap index: one level of nesting, as the protocol allows
            if len(seen) >= self.max_pages:
                break
            try:
                more, _ = parse_sitemap(child, self.fetcher.get(child).body, self.max_pages - len(seen), check)
                for url in more:
                    if url not in seen:
                        seen.add(url)
                        pages.append(url)
            except Stopped:
                raise
            except CrawlError as exc:
                yield exc
        if not pages:
            raise ParseError(target, "sitemap lists no pages")
        unique = list(dict.fromkeys(pages))[: self.max_pages]
        yield from _page_items(self.fetcher, author, [(url, "", None, "") for url in unique])
