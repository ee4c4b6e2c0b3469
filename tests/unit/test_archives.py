"""The archives people own, built here from each format's documented shape: a Medium export, a
Substack export, an X archive, PDF and DOCX files, a Markdown vault. What is kept (published pieces
with title, date and link), what is dropped (drafts, other people's words, engagement data,
subscriber lists), detection from content, re-imports, and bad input reported per file."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest

from llm_twin.config import Settings
from llm_twin.warehouse import Warehouse
from services.crawler.core import Crawler
from services.crawler.errors import CrawlError, ParseError
from services.crawler.sources import SOURCES
from services.crawler.sources.office import clean_pages
from twin_cli.bench_archives import text_pdf as _pdf

AUTHOR = "Mara Quill"


def medium_post(title: str, body: str, published: str, canonical: str) -> str:
    return (f'<html><body><article class="h-entry"><header><h1 class="p-name">{title}</h1></header>'
            f'<section data-field="subtitle" class="p-summary">A subtitle</section>'
            f'<section data-field="body" class="e-content"><section class="section"><div class="section-inner">'
            f'<h3 class="graf--title">{title}</h3>{body}</div></section></section>'
            f'<footer><p>By <a class="p-author h-card" href="https://medium.com/@mara">Mara</a> on '
            f'<time class="dt-published" datetime="{published}">a date</time>.</p>'
            f'<p><a class="p-canonical" href="{canonical}">Canonical link</a></p></footer></article></body></html>')


@pytest.fixture
def medium(tmp_path):
    path = tmp_path / "medium-export.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("posts/2023-04-01_Chunking-is-a-product-decision-1a2b.html", medium_post(
            "Chunking is a product decision",
            "<p>I cut documents where a reader would pause.</p><h4>Overlap</h4><p>A little overlap helps.</p>"
            "<pre>def chunk(text):\n    return text.split('\\n\\n')</pre>",
            "2023-04-01T10:00:00.000Z", "https://medium.com/@mara/chunking-1a2b"))
        z.writestr("posts/2023-05-02_Feature-flags-expire-3c4d.html", medium_post(
            "Feature flags expire", "<p>Every flag gets an expiry date.</p>", "2023-05-02T09:00:00.000Z",
            "https://medium.com/@mara/flags-3c4d"))
        z.writestr("posts/draft_Unfinished-thoughts-5e6f.html", medium_post(
            "Unfinished thoughts", "<p>DRAFT-ONLY sentence.</p>", "2023-06-01T09:00:00.000Z", ""))
        z.writestr("claps/claps_001.html", "<html><body><p>CLAPPED-BY-OTHERS sentence</p></body></html>")
        z.writestr("bookmarks/bookmarks_001.html", "<html><body><p>BOOKMARKED sentence</p></body></html>")
        z.writestr("highlights/highlights_001.html", "<html><body><p>HIGHLIGHT of someone</p></body></html>")
        z.writestr("profile/profile.html", "<html><body><p>Mara Quill, mara@example.com</p></body></html>")
    return path


@pytest.fixture
def substack(tmp_path):
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["post_id", "post_date", "is_published", "email_sent_at", "inbox_sent_at", "type", "audience", "title",
                "subtitle", "podcast_url"])
    w.writerow(["101.why-evals-first", "2024-01-05T08:00:00.000Z", "true", "", "", "newsletter", "everyone",
                "Why evals come first", "Write the test set before the model", ""])
    w.writerow(["102.unfinished", "2024-02-01T08:00:00.000Z", "false", "", "", "newsletter", "everyone",
                "Unfinished", "", ""])
    w.writerow(["103.gpu-costs", "2024-03-01T08:00:00.000Z", "true", "", "", "newsletter", "only_paid",
                "GPU costs are design", "", ""])
    path = tmp_path / "substack-export.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("posts.csv", rows.getvalue())
        z.writestr("posts/101.why-evals-first.html", "<p>I write the evaluation set first.</p><ul><li>Questions"
                                                     "</li><li>Gold links</li></ul>")
        z.writestr("posts/102.unfinished.html", "<p>DRAFT-ONLY sentence.</p>")
        z.writestr("posts/103.gpu-costs.html", "<h2>Budget</h2><p>GPU hours are a design input.</p>")
        z.writestr("email_list.mara.csv", "email,active_subscription\nreader@example.com,true\n")
    return path


def tweet(id_str, text, created="Wed Oct 10 20:19:24 +0000 2018", reply_to=None, reply_user=None):
    return {"tweet": {"id_str": id_str, "full_text": text, "created_at": created, "in_reply_to_status_id_str": reply_to,
                      "in_reply_to_user_id_str": reply_user, "entities": {}, "favorite_count": "3"}}


@pytest.fixture
def x_archive(tmp_path):
    tweets = [tweet("100", "Retrieval beats memorisation. https://t.co/abc123"),
              tweet("200", "A thread on evals (1/3)"), tweet("201", "Write questions first (2/3)", reply_to="200",
                                                             reply_user="42"),
              tweet("202", "Then the gold links (3/3)", reply_to="201", reply_user="42"),
              tweet("300", "RT @someone: SOMEONE-ELSES words"),
              tweet("400", "@bob I disagree with OTHER-CONVERSATION", reply_to="999", reply_user="7")]
    path = tmp_path / "twitter-archive.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data/tweets.js", "window.YTD.tweets.part0 = " + json.dumps(tweets))
        z.writestr("data/account.js", "window.YTD.account.part0 = " + json.dumps(
            [{"account": {"accountId": "42", "username": "mara"}}]))
        z.writestr("data/like.js", "window.YTD.like.part0 = " + json.dumps(
            [{"like": {"tweetId": "5", "fullText": "LIKED words of others"}}]))
    return path


def crawled(source: str, path) -> list:
    """Everything the source yields for ``path`` (archive sources need no fetcher)."""
    return list(SOURCES[source]().crawl(str(path), AUTHOR))


def text_of(items) -> str:
    return "\n".join(d.text + d.title for d in items if not isinstance(d, CrawlError))


def test_a_medium_export_gives_its_published_posts_with_structure(medium):
    items = crawled("medium-export", medium)
    assert sorted(d.title for d in items) == ["Chunking is a product decision", "Feature flags expire"]
    chunking = next(d for d in items if d.title.startswith("Chunking"))
    assert chunking.link == "https://medium.com/@mara/chunking-1a2b" and chunking.published.startswith("2023-04-01")
    assert "#### Overlap" in chunking.text and "```\ndef chunk(text):" in chunking.text
    assert not chunking.text.startswith("### Chunking")  # the repeated title is not body text
    for dropped in ("DRAFT-ONLY", "CLAPPED", "BOOKMARKED", "HIGHLIGHT", "mara@example.com"):
        assert dropped not in text_of(items)


def test_a_substack_export_gives_its_published_posts_and_never_the_subscribers(substack):
    items = crawled("substack-export", substack)
    assert sorted(d.title for d in items) == ["GPU costs are design", "Why evals come first"]
    evals = next(d for d in items if d.title.startswith("Why"))
    assert evals.link == evals.source == "archive://substack/101.why-evals-first"
    assert evals.text.startswith("Write the test set before the model") and "- Gold links" in evals.text
    assert evals.published.startswith("2024-01-05")
    assert "DRAFT-ONLY" not in text_of(items) and "reader@example.com" not in text_of(items)


def test_an_x_archive_gives_own_tweets_and_threads_joined(x_archive):
    items = crawled("x-archive", x_archive)
    by_category = {}
    for d in items:
        by_category.setdefault(d.category, []).append(d)
    (thread,) = by_category["thread"]
    assert thread.text == "A thread on evals (1/3)\n\nWrite questions first (2/3)\n\nThen the gold links (3/3)"
    assert thread.link == "https://x.com/i/web/status/200" and thread.published.startswith("2018-10-10")
    (post,) = by_category["post"]
    assert post.text == "Retrieval beats memorisation."  # the t.co link is not the author's words
    older = x_archive.with_name("older.zip")  # archives before 2022 name the file tweet.js
    with zipfile.ZipFile(x_archive) as z, zipfile.ZipFile(older, "w") as o:
        o.writestr("data/tweet.js", z.read("data/tweets.js").replace(b"YTD.tweets", b"YTD.tweet"))
        o.writestr("data/account.js", z.read("data/account.js"))
    assert SOURCES["x-archive"].claims(str(older), older)
    assert sorted(d.text for d in crawled("x-archive", older)) == sorted(d.text for d in items)
    for dropped in ("SOMEONE-ELSES", "OTHER-CONVERSATION", "LIKED"):
        assert dropped not in text_of(items)


def test_archives_are_detected_from_their_content_and_reimports_change_nothing(tmp_path, medium, substack, x_archive):
    settings = Settings(data_dir=tmp_path / "twin")
    crawler = Crawler.from_settings(settings)
    for path, kind in ((medium, "medium-export"), (substack, "substack-export"), (x_archive, "x-archive")):
        renamed = path.with_name("download.zip")  # names say nothing: the content decides
        path.rename(renamed)
        assert crawler.detect(str(renamed)) == kind
        first = crawler.crawl([str(renamed)], AUTHOR)
        again = crawler.crawl([str(renamed)], AUTHOR)
        assert {o.status for o in first.outcomes} == {"stored"}, first.outcomes
        assert {o.status for o in again.outcomes} == {"unchanged"}, again.outcomes
    warehouse = Warehouse(settings.resolved_warehouse_uri)
    assert len(list(warehouse.documents())) == 2 + 2 + 2


def test_a_zip_bomb_and_broken_files_are_refused_each_on_its_own_line(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("data/tweets.js", "window.YTD.tweets.part0 = [" + " " * 3_000_000 + "]")
    source = SOURCES["x-archive"](max_bytes=1_000_000)
    with pytest.raises(ParseError, match="decompresses to more than"):
        list(source.crawl(str(bomb), AUTHOR))
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("data/tweets.js", "window.YTD.tweets.part0 = [{not json")
    with pytest.raises(ParseError, match="does not parse"):
        list(SOURCES["x-archive"]().crawl(str(broken), AUTHOR))
    medium = tmp_path / "m.zip"
    with zipfile.ZipFile(medium, "w") as z:
        z.writestr("posts/good.html", medium_post("Good", "<p>Fine words.</p>", "2023-01-01", "https://m.test/g"))
        z.writestr("posts/odd.html", "<html><body><p>no h-entry here</p></body></html>")
    items = list(SOURCES["medium-export"]().crawl(str(medium), AUTHOR))
    assert sorted(type(i).__name__ for i in items) == ["ParseError", "RawDocument"]  # the bad post alone fails
    assert any("no h-entry" in str(i) for i in items if isinstance(i, CrawlError))


def test_a_pdf_keeps_its_text_in_order_without_running_headers_and_hyphens(tmp_path):
    pages = [["Quarterly Notes", "Retrieval systems need care-", "ful evaluation before launch.", "1"],
             ["Quarterly Notes", "Chunk boundaries follow the reader.", "2"],
             ["Quarterly Notes", "Rerankers earn their cost rarely.", "3"]]
    path = tmp_path / "talk.bin"
    path.write_bytes(_pdf(pages, title="Evaluating retrieval"))
    crawler = Crawler.from_settings(Settings(data_dir=tmp_path / "twin"))
    assert crawler.detect(str(path)) == "pdf"  # by its bytes, not its name
    (doc,) = list(SOURCES["pdf"]().crawl(str(path), AUTHOR))
    assert doc.title == "Evaluating retrieval" and doc.category == "document" and doc.published == "2024-03-15"
    assert "careful evaluation" in doc.text and "Quarterly Notes" not in doc.text
    assert doc.text.index("careful") < doc.text.index("Chunk boundaries") < doc.text.index("Rerankers")
    assert not any(line.strip() in ("1", "2", "3") for line in doc.text.splitlines())


def test_an_encrypted_or_broken_pdf_is_one_clear_line(tmp_path):
    from pypdf import PdfReader, PdfWriter

    plain = tmp_path / "plain.pdf"
    plain.write_bytes(_pdf([["Secret notes"]]))
    writer = PdfWriter(clone_from=PdfReader(str(plain)))
    writer.encrypt("pw")
    locked = tmp_path / "locked.pdf"
    with locked.open("wb") as f:
        writer.write(f)
    with pytest.raises(ParseError, match="encrypted"):
        list(SOURCES["pdf"]().crawl(str(locked), AUTHOR))
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\nthis is not a pdf at all")
    with pytest.raises(CrawlError):
        list(SOURCES["pdf"]().crawl(str(broken), AUTHOR))


def test_a_docx_keeps_its_headings(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Running on-call without tears", level=1)
    document.add_paragraph("Pages should be rare and actionable.")
    document.add_heading("Rotations", level=2)
    document.add_paragraph("One week on, three weeks off.", style="List Bullet")
    path = tmp_path / "oncall.docx"
    document.save(path)
    assert Crawler.from_settings(Settings(data_dir=tmp_path / "twin")).detect(str(path)) == "docx"
    (doc,) = list(SOURCES["docx"]().crawl(str(path), AUTHOR))
    assert doc.title == "Running on-call without tears" and doc.category == "document"
    assert doc.text.splitlines()[0] == "# Running on-call without tears" and "## Rotations" in doc.text
    assert "- One week on, three weeks off." in doc.text


def test_a_markdown_vault_reads_front_matter_and_wiki_links(tmp_path):
    vault = tmp_path / "vault"
    (vault / ".obsidian").mkdir(parents=True)
    (vault / ".obsidian" / "workspace.json").write_text("{}")
    (vault / "Chunking.md").write_text("---\ntitle: Chunking notes\ndate: 2024-02-03\ntags: [rag]\n---\n"
                                       "Cut where [[Readers|a reader]] pauses; see [[Overlap#small]].\n")
    (doc,) = [d for d in SOURCES["folder"]().crawl(str(vault), AUTHOR) if not isinstance(d, CrawlError)]
    assert doc.title == "Chunking notes" and doc.published == "2024-02-03"
    assert doc.text.strip() == "Cut where a reader pauses; see Overlap."


def test_running_lines_need_most_pages():
    assert clean_pages(["Intro\nbody one", "Other\nbody two"]) == "Intro\nbody one\nOther\nbody two"


def test_a_twinmodels_archives_are_copied_from_object_storage_and_recognised(tmp_path, medium, x_archive):
    """What the RayJob's pipeline does with ``author.sources.archives``: each URI copied into the job,
    then read by the source its content calls for; one that cannot be read is one failed line."""
    from llm_twin.twinmodel import Sources

    sources = Sources(archives=[medium.as_uri(), x_archive.as_uri(), (tmp_path / "missing.zip").as_uri()])
    settings = Settings(data_dir=tmp_path / "twin")
    report = Crawler.from_settings(settings).crawl_sources(sources, AUTHOR)
    assert sorted(o.status for o in report.outcomes) == ["failed"] + ["stored"] * 4
    assert "missing.zip" in next(o.target for o in report.outcomes if o.status == "failed")
    stored = list(Warehouse(settings.resolved_warehouse_uri).documents())
    assert sorted(d.platform for d in stored) == ["medium.com", "medium.com", "x.com", "x.com"]
    assert Sources.model_validate({"archives": ["s3://b/medium.zip"]}).targets() == [("archive", ["s3://b/medium.zip"])]


def test_the_same_post_from_an_export_and_from_the_blogs_feed_is_one_document(medium):
    """The existing near-duplicate step: a Medium export's post and the same post crawled from the
    blog (its page has the site's chrome around it) index as one document."""
    from llm_twin.documents import RawDocument
    from llm_twin.features.clean import clean_corpus

    exported = next(d for d in crawled("medium-export", medium) if d.title.startswith("Chunking"))
    from_feed = RawDocument.create(author=AUTHOR, category="article", source="https://mara.blog/chunking",
                                   link="https://mara.blog/chunking", title=exported.title,
                                   text=exported.text + "\n\nSubscribe to get new posts by email.")
    kept, dropped = clean_corpus([exported, from_feed])
    assert len(kept) == 1 and len(dropped) == 1
