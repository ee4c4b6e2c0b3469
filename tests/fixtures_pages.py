"""HTML pages and feeds written for the crawler tests (our own text)."""

from __future__ import annotations

from html import escape


def article_html(title: str, paragraphs: list[str], author: str = "Ada Writer", date: str = "2024-05-01") -> str:
    body = "\n".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="author" content="{escape(author)}"><meta property="article:published_time" content="{date}"></head>
<body><header><nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/subscribe">Subscribe</a></nav></header>
<main><article><h1>{escape(title)}</h1>{body}</article></main>
<aside><h3>Related posts</h3><ul><li><a href="/x">Ten unrelated links you will love</a></li></ul></aside>
<footer><p>© 2024 Ada Writer. All rights reserved. Privacy policy. Cookie settings.</p></footer></body></html>"""


PARAGRAPHS = {
    "vector-databases": [
        "Vector databases store embeddings next to their payloads so that similar items can be found quickly.",
        "An approximate nearest neighbour index such as HNSW trades a little recall for a large gain in speed, "
        "which is usually the right trade for retrieval augmented generation.",
        "Filtering by author or category before the vector search keeps the answers grounded in the right sources.",
    ],
    "sourdough": [
        "A sourdough starter is a culture of wild yeast and lactic acid bacteria kept alive with flour and water.",
        "Feeding the starter twice a day at room temperature keeps it active and gives the bread a mild sour taste.",
        "Bakers judge readiness by the float test: a spoonful of a ripe starter floats in water.",
    ],
    "kubernetes": [
        "Kubernetes operators encode the knowledge of a human operator into a controller that reconciles resources.",
        "A reconcile loop compares the desired state in a custom resource with the actual state of the cluster.",
        "Status conditions tell users which stage a resource has reached and why it is stuck.",
    ],
}


def rss_feed(base: str, slugs: list[str], broken: str | None = None) -> str:
    items = "".join(
        f"<item><title>{slug.replace('-', ' ').title()}</title><link>{base}/posts/{slug}.html</link>"
        f"<pubDate>Wed, 01 May 2024 10:00:00 GMT</pubDate><description>Teaser only.</description></item>"
        for slug in slugs
    )
    if broken:
        items += f"<item><title>Gone</title><link>{base}/posts/{broken}.html</link></item>"
    return (f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Ada writes</title>'
            f"<link>{base}</link><description>Blog</description>{items}</channel></rss>")


def atom_feed(base: str, slugs: list[str]) -> str:
    entries = "".join(
        f'<entry><title>{slug}</title><link href="{base}/posts/{slug}.html"/><id>{base}/{slug}</id>'
        f"<updated>2024-05-01T10:00:00Z</updated></entry>" for slug in slugs
    )
    return (f'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>Ada</title><id>{base}/</id><updated>2024-05-01T10:00:00Z</updated>{entries}</feed>")


def sitemap(base: str, slugs: list[str]) -> str:
    urls = "".join(f"<url><loc>{base}/posts/{slug}.html</loc></url>" for slug in slugs)
    return f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'


def serve_blog(site, broken: str | None = None) -> dict[str, str]:
    """Serve the three posts, an RSS feed, an Atom feed and a sitemap; -> their URLs."""
    slugs = list(PARAGRAPHS)
    for slug, paragraphs in PARAGRAPHS.items():
        site.add(f"/posts/{slug}.html", article_html(slug.replace("-", " ").title(), paragraphs))
    return {
        "rss": site.add("/feed.xml", rss_feed(site.url, slugs, broken), "application/rss+xml"),
        "atom": site.add("/atom.xml", atom_feed(site.url, slugs), "application/atom+xml"),
        "sitemap": site.add("/sitemap.xml", sitemap(site.url, slugs), "application/xml"),
        **{slug: f"{site.url}/posts/{slug}.html" for slug in slugs},
    }
