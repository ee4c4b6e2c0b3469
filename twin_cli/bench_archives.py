"""`make bench BENCH=archives`: each archive format's extraction on archives built here from the
formats' documented shapes (several published pieces with known bodies, drafts, folders and rows
that are not the author's writing; PDFs with a running header, page numbers and a hyphenated
word): pieces kept against pieces published, the text's word F1 against the bodies written, and
how many dropped items leaked (goal 0). Synthetic archives of the documented shapes: real exports
drift from them, and each source reports what it cannot read file by file.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

BODIES = [
    ("Chunking is a product decision", ["I cut documents where a reader would pause, not every 512 tokens.",
                                        "A little overlap keeps a definition next to its use."]),
    ("Feature flags expire", ["Every flag I add gets an expiry date and an owner.",
                              "A flag past its date fails the build until someone decides."]),
    ("One trace per request", ["A request that crosses five services should be one trace.",
                               "Spans carry the twin, the model and the tokens."]),
    ("Small models, big wins", ["A 135M model answers many narrow questions well enough.",
                                "Measure before you reach for a bigger one."]),
]
DROPPED = "LEAKED-MARKER"  # written only into what must be dropped


def _medium(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for i, (title, paragraphs) in enumerate(BODIES):
            body = "".join(f"<p>{p}</p>" for p in paragraphs)
            z.writestr(f"posts/2023-0{i + 1}-01_post-{i}.html", (
                f'<html><body><article class="h-entry"><h1 class="p-name">{title}</h1>'
                f'<section data-field="body" class="e-content"><h3>{title}</h3>{body}</section>'
                f'<time class="dt-published" datetime="2023-0{i + 1}-01T10:00:00Z">d</time>'
                f'<a class="p-canonical" href="https://medium.com/@m/post-{i}">c</a></article></body></html>'))
        z.writestr("posts/draft_unpublished.html", f'<article class="h-entry"><h1 class="p-name">Draft</h1>'
                                                   f'<section class="e-content"><p>{DROPPED} draft</p></section>')
        for folder in ("claps", "bookmarks", "highlights", "profile"):
            z.writestr(f"{folder}/{folder}.html", f"<p>{DROPPED} {folder}</p>")


def _substack(path: Path) -> None:
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["post_id", "post_date", "is_published", "type", "audience", "title", "subtitle"])
    with zipfile.ZipFile(path, "w") as z:
        for i, (title, paragraphs) in enumerate(BODIES):
            w.writerow([f"{100 + i}.post-{i}", "2024-01-01", "true", "newsletter", "everyone", title, ""])
            z.writestr(f"posts/{100 + i}.post-{i}.html", "".join(f"<p>{p}</p>" for p in paragraphs))
        w.writerow(["900.draft", "2024-01-01", "false", "newsletter", "everyone", "Draft", ""])
        z.writestr("posts/900.draft.html", f"<p>{DROPPED} draft</p>")
        z.writestr("posts.csv", rows.getvalue())
        z.writestr("email_list.csv", f"email\n{DROPPED}@example.com\n")


def _x(path: Path) -> None:
    tweets = []
    for i, (_, paragraphs) in enumerate(BODIES):  # each body as a thread of the owner's replies to themself
        for j, text in enumerate(paragraphs):
            tweets.append({"tweet": {"id_str": str(1000 * (i + 1) + j), "full_text": text,
                                     "created_at": "Wed Oct 10 20:19:24 +0000 2018",
                                     "in_reply_to_status_id_str": str(1000 * (i + 1) + j - 1) if j else None,
                                     "in_reply_to_user_id_str": "42" if j else None}})
    tweets.append({"tweet": {"id_str": "9001", "full_text": f"RT @other: {DROPPED} retweet"}})
    tweets.append({"tweet": {"id_str": "9002", "full_text": f"@bob {DROPPED} reply", "in_reply_to_status_id_str": "5",
                             "in_reply_to_user_id_str": "7"}})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data/tweets.js", "window.YTD.tweets.part0 = " + json.dumps(tweets))
        z.writestr("data/account.js", 'window.YTD.account.part0 = [{"account": {"accountId": "42"}}]')
        z.writestr("data/like.js", f'window.YTD.like.part0 = [{{"like": {{"fullText": "{DROPPED} like"}}}}]')


def _docx(folder: Path) -> list[Path]:
    import docx

    paths = []
    for i, (title, paragraphs) in enumerate(BODIES):
        document = docx.Document()
        document.add_heading(title, level=1)
        for p in paragraphs:
            document.add_paragraph(p)
        paths.append(folder / f"doc-{i}.docx")
        document.save(paths[-1])
    return paths


def text_pdf(pages: list[list[str]], title: str = "") -> bytes:
    """A small PDF with one text line per entry, made by hand (pypdf reads what it writes)."""
    objects, kids = [], []
    font = 3
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(None)  # the pages tree, filled in below
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for lines in pages:
        ops = ["BT /F1 11 Tf 72 760 Td 14 TL"] + [f"({line}) Tj T*" for line in lines] + ["ET"]
        stream = "\n".join(ops).encode()
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content = len(objects)
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (content, font))
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    info = None
    if title:
        objects.append(b"<< /Title (%s) /CreationDate (D:20240315120000Z) >>" % title.encode())
        info = len(objects)
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    trailer = b"<< /Size %d /Root 1 0 R%s >>" % (len(objects) + 1, b" /Info %d 0 R" % info if info else b"")
    out += b"trailer\n" + trailer + b"\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def _words(text: str) -> Counter:
    return Counter(re.findall(r"[a-z0-9]+", text.lower()))


def _f1(found: str, expected: str) -> float:
    a, b = _words(found), _words(expected)
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def run() -> None:
    from services.crawler.errors import CrawlError
    from services.crawler.sources import SOURCES

    expected = {title: " ".join(paragraphs) for title, paragraphs in BODIES}
    with tempfile.TemporaryDirectory(prefix="twin-bench-archives-") as tmp:
        root = Path(tmp)
        cases = {}
        for name, build in (("medium-export", _medium), ("substack-export", _substack), ("x-archive", _x)):
            path = root / f"{name}.zip"
            build(path)
            cases[name] = [path]
        cases["docx"] = _docx(root)
        cases["pdf"] = []
        for i, (title, paragraphs) in enumerate(BODIES):  # running header, page numbers, a hyphenated word
            words = " ".join(paragraphs).split()
            half = len(words) // 2
            pages = [["Mara Quill - Collected notes", " ".join(words[:half - 1]), words[half - 1][:3] + "-",
                      words[half - 1][3:] + " " + " ".join(words[half:]), "1"],
                     ["Mara Quill - Collected notes", title, "2"], ["Mara Quill - Collected notes", "3"]]
            cases["pdf"].append(root / f"talk-{i}.pdf")
            cases["pdf"][-1].write_bytes(text_pdf(pages, title=title))
        for source, paths in cases.items():
            documents, errors = [], 0
            for path in paths:
                for item in SOURCES[source]().crawl(str(path), "Mara Quill"):
                    if isinstance(item, CrawlError):
                        errors += 1
                    else:
                        documents.append(item)
            scores = []
            for doc in documents:
                body = next((b for t, b in expected.items() if t == doc.title or doc.text.startswith(b[:30])), "")
                scores.append(_f1(doc.text.replace(f"# {doc.title}", ""), body))
            leaked = sum(DROPPED in d.text or DROPPED in d.title for d in documents)
            mean = sum(scores) / len(scores) if scores else 0.0
            print(f"archives: {source:16} {len(documents)}/{len(BODIES)} published pieces kept, text word F1 "
                  f"{mean:.3f}, dropped items leaked {leaked}, errors {errors}")
