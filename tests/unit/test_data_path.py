"""Fast tests of the pure parts of the data path (no model, no Milvus)."""

from __future__ import annotations

import json

import pytest

from llm_twin.documents import RawDocument, author_slug, document_id
from llm_twin.evaluation.extraction import page_counts, score
from llm_twin.evaluation.retrieval import QuestionFileError, evaluate, load_questions
from llm_twin.features.chunk import Chunker
from llm_twin.features.clean import clean_corpus
from llm_twin.handbook import HandbookImportError, import_handbook
from llm_twin.warehouse import Warehouse
from services.crawler.sources.git import skip_reason, web_link
from services.retrieval.keywords import keyword_text


def words(texts):
    return [len(t.split()) for t in texts]


def test_ids_are_deterministic_and_slugs_readable():
    assert author_slug("Paul Iusztin") == "paul-iusztin" and author_slug("  Zoë  Ünal ") == "zoe-unal"
    assert document_id("Paul Iusztin", "https://x/a") == document_id("paul iusztin", "https://x/a")
    assert document_id("Paul Iusztin", "https://x/a") != document_id("Paul Iusztin", "https://x/b")
    with pytest.raises(ValueError, match="no letters"):
        author_slug("!!!")
    with pytest.raises(ValueError, match="no text"):
        RawDocument.create(author="A", category="article", source="s", text="  ")


def test_warehouse_put_is_idempotent_and_replaces_changes():
    warehouse = Warehouse("memory://wh-test")  # any fsspec filesystem: the same code runs on s3://
    doc = RawDocument.create(author="Ada", category="article", source="https://x/a", title="A", text="one")
    assert warehouse.put(doc) == "stored"
    assert warehouse.put(doc) == "unchanged"
    changed = RawDocument.create(author="Ada", category="article", source="https://x/a", title="A", text="two")
    assert warehouse.put(changed) == "updated"
    moved = RawDocument.create(author="Ada", category="post", source="https://x/a", title="A", text="two")
    assert warehouse.put(moved) == "updated"
    assert [d.text for d in warehouse.documents()] == ["two"] and warehouse.get(doc.id).category == "post"
    assert warehouse.authors() == {"ada": "Ada"}
    assert not [p for p in warehouse.fs.find(warehouse.root) if p.endswith(".tmp")]


def test_cleaning_removes_chrome_boilerplate_and_duplicates():
    footer = "Whenever you are ready, here is how I can help you: join the course."
    docs = [
        RawDocument.create(author="A", category="article", source=f"https://s/{i}", title=f"T{i}",
                           text=f"Sign in\nSubscribe\n𝗕𝗼𝗹𝗱 idea number {i} about retrieval.\n{footer}\nShare this post")
        for i in range(4)
    ]
    copy = RawDocument.create(author="A", category="article", source="https://m/0", title="T0",
                              text="𝗕𝗼𝗹𝗱 idea number 0 about retrieval.\nOpen in appSign upSign inWrite")
    kept, dropped = clean_corpus(docs + [copy])
    assert len(kept) == 4 and len(dropped) == 1
    texts = {c.doc.link: c.text for c in kept}
    assert texts["https://s/1"] == "Bold idea number 1 about retrieval."


def test_prose_chunks_fit_the_budget_overlap_and_are_deterministic():
    text = "# Intro\n" + "\n".join(f"Sentence number {i} says something useful." for i in range(40))
    chunker = Chunker(words, max_tokens=30, overlap_tokens=8)
    chunks = chunker.chunk("doc", "hash", "article", text)
    assert len(chunks) > 3 and all(len(c.text.split()) <= 30 for c in chunks)
    assert all(c.heading == "Intro" for c in chunks)
    first_tail = chunks[0].text.split(". ")[-1]
    assert first_tail.rstrip(".") in chunks[1].text  # the overlap repeats the last sentence
    assert [c.id for c in chunker.chunk("doc", "hash", "article", text)] == [c.id for c in chunks]
    assert chunker.chunk("doc", "other-hash", "article", text)[0].id != chunks[0].id


def test_code_chunks_split_at_definitions():
    functions = "".join(f"\n\ndef f{i}(a, b):\n    total = a + b + {i}\n    return total * 2 - 1\n" for i in range(6))
    code = "import os" + functions
    chunks = Chunker(words, max_tokens=20, overlap_tokens=0).chunk("d", "h", "code", code)
    assert len(chunks) >= 3
    assert all(c.text.startswith(("import os", "def f")) for c in chunks)  # never cut inside a function
    assert all(len(c.text.split()) <= 20 for c in chunks)
    with pytest.raises(ValueError, match="overlap"):
        Chunker(words, max_tokens=10, overlap_tokens=10)


def test_extraction_metric():
    truth = "the quick brown fox jumps over the lazy dog"
    assert page_counts(truth, truth) == (1.0, 0.0, 0.0)
    p, r, f1, n = score([(truth, truth), ("", truth)])
    assert (p, r, n) == (0.5, 0.5, 2) and f1 == pytest.approx(0.5)


def test_keyword_text_stems_and_drops_stop_words():
    assert keyword_text("The Pipelines are RUNNING") == keyword_text("pipeline run") == "pipelin run"


def test_question_file_validation(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text(json.dumps({"question": "q?", "author": None, "gold_links": ["https://a"]}) + "\n\n")
    (question,) = load_questions(good)
    assert evaluate([question], lambda q: ["https://b", "https://a"]) == {
        "hit@1": 0.0, "hit@5": 1.0, "mrr@10": 0.5, "n": 1, "misses": [],
        "kinds": {"question": {"hit@1": 0.0, "hit@5": 1.0, "mrr@10": 0.5, "n": 1}}}
    for line, message in [("not json", "not valid JSON"), ('{"question": ""}', "question"),
                          ('{"question": "q", "gold_links": "x"}', "gold_links")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(QuestionFileError, match=message):
            load_questions(bad)


def test_git_file_rules():
    assert skip_reason("package-lock.json") and skip_reason("vendor/x.py") and skip_reason(".github/ci.yml")
    assert skip_reason("src/app.py") is None
    assert web_link("https://github.com/a/b.git", "src/x.py") == "https://github.com/a/b/blob/HEAD/src/x.py"


def test_handbook_import_errors_and_mapping(tmp_path):
    with pytest.raises(HandbookImportError, match="none of"):
        import_handbook(tmp_path, Warehouse("memory://hb"))
    (tmp_path / "ArticleDocument.json").write_text("{broken")
    with pytest.raises(HandbookImportError, match="not valid JSON"):
        import_handbook(tmp_path, Warehouse("memory://hb"))
    (tmp_path / "UserDocument.json").write_text(json.dumps([{"_id": "u1", "first_name": "Ada", "last_name": "W"}]))
    (tmp_path / "ArticleDocument.json").write_text(json.dumps([
        {"_id": "1", "author_id": "u1", "link": "https://x/1", "platform": "x", "content": {"Title": "T",
                                                                                            "Content": "Body"}}]))
    (tmp_path / "RepositoryDocument.json").write_text(json.dumps([
        {"_id": "2", "author_id": "u1", "name": "repo", "link": "https://github.com/a/repo",
         "content": {"main.py": "print(1)", "empty.txt": ""}}]))
    warehouse = Warehouse("memory://hb2")
    assert import_handbook(tmp_path, warehouse) == {"stored": 2, "updated": 0, "unchanged": 0}
    assert {(d.author, d.category, d.link) for d in warehouse.documents()} == {
        ("Ada W", "article", "https://x/1"), ("Ada W", "code", "https://github.com/a/repo")}
