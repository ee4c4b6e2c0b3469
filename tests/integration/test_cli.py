"""The `twin` command as a user runs it: real processes, real files, fixtures on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_pages import serve_blog

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ROOT / "tests" / "data" / "handbook_questions.jsonl"


def twin(data_dir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "TWIN_DATA_DIR": str(data_dir), "TWIN_TORCH_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "twin_cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_crawl_prints_a_line_per_url_and_a_summary(site, tmp_path):
    urls = serve_blog(site, broken="gone")
    refused = twin(tmp_path, "crawl", urls["rss"], "--author", "Ada Writer")  # 127.0.0.1 is not public
    assert refused.returncode == 1 and "127.0.0.1, a loopback address" in refused.stdout
    assert "TWIN_CRAWL_ALLOWED_NETWORKS" in refused.stdout
    done = twin(tmp_path, "crawl", urls["rss"], "--author", "Ada Writer", "--allow-private")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert sum(line.startswith("stored") for line in lines) == 3
    assert any(line.startswith("failed") and "gone.html" in line and "HTTP 404" in line for line in lines)
    assert lines[-1] == "3 stored, 0 updated, 0 unchanged, 1 failed"
    again = twin(tmp_path, "crawl", urls["rss"], "--author", "Ada Writer", "--allow-private")
    assert again.stdout.strip().splitlines()[-1] == "0 stored, 0 updated, 3 unchanged, 1 failed"


def test_crawl_exits_non_zero_only_when_nothing_could_be_crawled(tmp_path):
    done = twin(tmp_path, "crawl", "ftp://example.invalid/x", "http://127.0.0.1:9/", "--author", "Ada",
                "--allow-private")
    assert done.returncode == 1
    assert "not an http(s) URL" in done.stdout and "unreachable" in done.stdout
    assert "nothing could be crawled" in done.stderr
    assert twin(tmp_path, "crawl", "x", "--author", "  ").returncode != 0


def test_extract_jsonl(tmp_path):
    page = tmp_path / "p.html"
    from tests.fixtures_pages import PARAGRAPHS, article_html

    page.write_text(article_html("Vector Databases", PARAGRAPHS["vector-databases"]))
    done = twin(tmp_path, "extract", str(page), "--jsonl")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["path"] == str(page) and record["title"] == "Vector Databases" and "HNSW" in record["text"]


def test_bad_question_file_and_unknown_author_are_clear_errors(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "x", "gold_links": []}\n')
    done = twin(tmp_path, "eval", "retrieval", "--questions", str(bad))
    assert done.returncode == 1 and "q.jsonl:1" in done.stderr and "gold_links" in done.stderr
    done = twin(tmp_path, "search", "anything", "--author", "Nobody Here")
    assert done.returncode == 1 and "no twin named 'Nobody Here'" in done.stderr


@pytest.mark.slow
def test_extraction_benchmark_f1(shared_dir, tmp_path):
    done = twin(tmp_path, "eval", "extraction", str(shared_dir / "benchmarks" / "article-extraction"), "--json")
    assert done.returncode == 0, done.stderr
    score = json.loads(done.stdout)
    assert score["pages"] == 181
    assert score["f1"] >= 0.96  # trafilatura's published 0.958; this extractor measures 0.967


@pytest.mark.slow
def test_handbook_corpus_end_to_end(shared_dir, tmp_path):
    corpus = shared_dir / "corpus" / "llm-engineers-handbook"
    imported = twin(tmp_path, "import-handbook", str(corpus))
    assert imported.returncode == 0 and imported.stdout.strip() == "76 stored, 0 updated, 0 unchanged"

    indexed = twin(tmp_path, "index")
    assert indexed.returncode == 0, indexed.stderr
    assert "72 documents (4 duplicates dropped): 72 indexed" in indexed.stdout

    scores = {}
    for strategy in ("rrf", "hybrid"):
        done = twin(tmp_path, "eval", "retrieval", "--questions", str(QUESTIONS), "--strategy", strategy, "--json")
        assert done.returncode == 0, done.stderr
        scores[strategy] = json.loads(done.stdout)
    assert scores["hybrid"]["n"] == 80
    assert scores["hybrid"]["hit@5"] >= 0.98 and scores["hybrid"]["mrr@10"] >= 0.95
    assert scores["hybrid"]["mrr@10"] >= scores["rrf"]["mrr@10"]

    found = twin(tmp_path, "search", "how does abliteration uncensor a model?", "--author", "Maxime Labonne",
                 "--top-k", "3", "--json")
    results = json.loads(found.stdout)
    assert "abliteration" in results[0]["title"].lower() and all(r["author"] == "Maxime Labonne" for r in results)

    again = twin(tmp_path, "index")
    assert "0 indexed, 72 unchanged, 0 removed; 0 chunks written" in again.stdout


def test_archives_are_crawled_once_indexed_and_searched(tmp_path):
    """`twin crawl` of a Medium export, an X archive and a .docx (detected from their content),
    a second import changing nothing, then `twin index` and `twin search` finding each piece and
    none of what was dropped."""
    import zipfile

    import docx

    from tests.unit.test_archives import medium_post, tweet

    medium = tmp_path / "medium.zip"
    with zipfile.ZipFile(medium, "w") as z:
        z.writestr("posts/2023-04-01_Sourdough-starters-1a.html", medium_post(
            "Sourdough starters", "<p>A sourdough starter wants flour, water and patience every morning.</p>",
            "2023-04-01T10:00:00Z", "https://medium.com/@ada/sourdough-1a"))
        z.writestr("posts/draft_Secret-plans-2b.html", medium_post(
            "Secret plans", "<p>Zeppelin harbour blueprints stay private.</p>", "2023-05-01T10:00:00Z", ""))
        z.writestr("claps/claps.html", "<html><body><p>Zeppelin harbour blueprints clapped.</p></body></html>")
    x = tmp_path / "x.zip"
    with zipfile.ZipFile(x, "w") as z:
        z.writestr("data/tweets.js", "window.YTD.tweets.part0 = " + json.dumps([
            tweet("10", "Tomato seedlings need light from day one."),
            tweet("11", "RT @other: Zeppelin harbour rumours")]))
        z.writestr("data/account.js", 'window.YTD.account.part0 = [{"account": {"accountId": "1"}}]')
    document = docx.Document()
    document.add_heading("Beekeeping in winter", level=1)
    document.add_paragraph("Bees cluster to keep the queen warm through the winter months.")
    word = tmp_path / "bees.docx"
    document.save(word)
    data = tmp_path / "twin"
    for path in (medium, x, word):
        done = twin(data, "crawl", str(path), "--author", "Ada Writer")
        assert done.returncode == 0 and done.stdout.strip().splitlines()[-1].startswith("1 stored"), done.stdout
        again = twin(data, "crawl", str(path), "--author", "Ada Writer")
        assert again.stdout.strip().splitlines()[-1] == "0 stored, 0 updated, 1 unchanged, 0 failed", again.stdout
    assert twin(data, "index").returncode == 0
    for question, title in (("how do I feed a sourdough starter?", "Sourdough starters"),
                            ("what do tomato seedlings need?", "Tomato seedlings need light from day one."),
                            ("how do bees survive winter?", "Beekeeping in winter")):
        found = json.loads(twin(data, "search", question, "--author", "Ada Writer", "--top-k", "1", "--json").stdout)
        assert found[0]["title"] == title
    every = json.loads(twin(data, "search", "Zeppelin harbour blueprints", "--author", "Ada Writer", "--top-k", "5",
                            "--json").stdout)
    assert all("Zeppelin" not in r["text"] for r in every)


def test_eval_relevance_names_each_question_it_decided_wrongly(tmp_path):
    """Rates say how many; a twin's owner also needs to know which questions to look at. One file
    labels a question the sample blog answers as unanswerable (so answering it counts as wrong),
    the other an off-topic one (declined: right)."""
    from twin_cli.sample_corpus import AUTHOR, index_sample

    index_sample(tmp_path)
    labelled = tmp_path / "labelled.jsonl"
    rows = [{"question": "Why combine BM25 with embeddings?", "twin": AUTHOR, "kind": "mislabelled",
             "answerable": False},
            {"question": "How do I get red wine out of a carpet?", "twin": AUTHOR, "kind": "off-topic",
             "answerable": False},
            {"question": "How should I cut documents into chunks?", "twin": AUTHOR, "kind": "direct",
             "answerable": True}]
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = twin(tmp_path, "eval", "relevance", str(labelled), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["false_answer"] == 0.5 and result["false_refusal"] == 0.0
    assert [w["question"] for w in result["wrong"]] == ["Why combine BM25 with embeddings?"]
    assert result["wrong"][0]["kind"] == "mislabelled" and result["wrong"][0]["answerable"] is False
    text = twin(tmp_path, "eval", "relevance", str(labelled))
    wrong = "answered, though unanswerable: 'Why combine BM25 with embeddings?' (mislabelled; twin Mara Quill)"
    assert wrong in text.stdout
    assert "red wine" not in text.stdout
