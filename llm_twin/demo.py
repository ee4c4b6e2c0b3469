"""`make demo`: the data plane end to end on embedded defaults, on this machine alone.

Writes a small sample corpus (a fictional author's blog with an RSS feed, and a git repository
of their code), serves it on 127.0.0.1, crawls it, indexes it into Milvus Lite and asks it
questions. Nothing is downloaded: the embedding model ships in a package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from html import escape
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

AUTHOR = "Mara Quill"
POSTS = {
    "why-i-keep-a-build-log": ("Why I keep a build log", [
        "Every evening I write three lines about what I built, what broke and what I learned.",
        "After a year the log became the best documentation of my projects: it remembers the reasons, "
        "not just the code.",
        "When a bug comes back, searching the log for the error message usually finds the fix I forgot.",
    ]),
    "small-models-big-wins": ("Small models, big wins", [
        "A 135-million-parameter model will not write a novel, but it answers short questions fast on a laptop CPU.",
        "I fine-tune small models on my own notes so they sound like me, then let retrieval supply the facts.",
        "Latency matters more than size for tools you use fifty times a day.",
    ]),
    "chunking-is-a-product-decision": ("Chunking is a product decision", [
        "How you cut documents into chunks decides what your retrieval system can find.",
        "I chunk prose by paragraph and sentence, with a little overlap, and code by function, "
        "so that an answer never starts in the middle of a thought.",
        "Deterministic chunk ids make re-indexing idempotent: the same text always lands on the same id.",
    ]),
    "hybrid-search-notes": ("Notes on hybrid search", [
        "Dense embeddings catch paraphrases; BM25 catches rare words like error codes and product names.",
        "Fusing the two rankings with reciprocal rank fusion is simple and hard to beat.",
        "Filtering by author before searching keeps a twin from quoting somebody else.",
    ]),
    "sourdough-and-software": ("Sourdough and software", [
        "My sourdough starter taught me more about operations than any runbook.",
        "Feed it on a schedule, watch the signals, and keep a backup in the fridge: that is incident response.",
        "Both bread and services fail slowly, then all at once.",
    ]),
    "kubernetes-operators-for-humans": ("Kubernetes operators for humans", [
        "An operator is a loop that compares what you asked for with what exists and fixes the difference.",
        "Good operators report status conditions that tell you which stage is stuck and why.",
        "Never sleep inside a reconcile handler: ask to be called again later instead.",
    ]),
}
CODE = {
    "retry.py": "def retry(fn, attempts=3, backoff_s=0.5):\n    \"\"\"Call fn, retrying with exponential backoff.\"\"\"\n"
                "    import time\n    for attempt in range(attempts):\n        try:\n            return fn()\n"
                "        except OSError:\n            if attempt == attempts - 1:\n                raise\n"
                "            time.sleep(backoff_s * 2 ** attempt)\n",
    "README.md": "# mara-tools\n\nSmall helpers I use in every project: retries with backoff and a build log.\n",
}
QUESTIONS = [
    "How should I cut documents into chunks?",
    "Why combine BM25 with embeddings?",
    "How do I retry a flaky call?",
]


def page(title: str, paragraphs: list[str]) -> str:
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<meta name='author' content='{AUTHOR}'></head><body><nav><a href='/'>Home</a> · "
            f"<a href='/subscribe'>Subscribe</a></nav><article><h1>{escape(title)}</h1>{body}</article>"
            f"<footer>© 2024 {AUTHOR}</footer></body></html>")


def write_site(root: Path, base: str) -> None:
    (root / "posts").mkdir(parents=True)
    items = []
    for slug, (title, paragraphs) in POSTS.items():
        (root / "posts" / f"{slug}.html").write_text(page(title, paragraphs))
        items.append(f"<item><title>{escape(title)}</title><link>{base}/posts/{slug}.html</link></item>")
    (root / "feed.xml").write_text(f"<?xml version='1.0'?><rss version='2.0'><channel><title>{AUTHOR}</title>"
                                   f"<link>{base}</link>{''.join(items)}</channel></rss>")
    work = root / "work" / "mara-tools"
    work.mkdir(parents=True)
    for name, text in CODE.items():
        (work / name).write_text(text)
    git = ["git", "-c", "user.name=Mara Quill", "-c", "user.email=mara@example.test"]
    subprocess.run([*git, "init", "-q"], cwd=work, check=True)
    subprocess.run([*git, "add", "-A"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-qm", "tools"], cwd=work, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "mara-tools.git")], check=True)
    subprocess.run(["git", "update-server-info"], cwd=root / "mara-tools.git", check=True)


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def twin(data_dir: Path, *args: str) -> None:
    env = {**os.environ, "TWIN_DATA_DIR": str(data_dir)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llm_twin.cli", *args], env=env)
    print(f"   ({time.perf_counter() - started:.1f} s)")
    if done.returncode != 0:
        sys.exit(f"demo failed at: twin {' '.join(args)}")


def main() -> None:
    data_dir = Path(os.environ.get("TWIN_DEMO_DIR", ".twin/demo")).resolve()
    shutil.rmtree(data_dir, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="twin-demo-site-") as tmp:
        handler = partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}), directory=tmp)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        step(f"sample corpus: {len(POSTS)} posts + RSS feed + a git repository, served at {base}")
        write_site(Path(tmp), base)
        try:
            step("crawl the feed and the repository")
            twin(data_dir, "crawl", f"{base}/feed.xml", f"{base}/mara-tools.git", "--author", AUTHOR)
            step("index: clean, chunk, embed (all-MiniLM-L6-v2), load into Milvus Lite")
            twin(data_dir, "index")
            for question in QUESTIONS:
                step(f"search: {question}")
                twin(data_dir, "search", question, "--author", AUTHOR, "--top-k", "2")
        finally:
            server.shutdown()
    step(f"done. The index lives in {data_dir}; try: TWIN_DATA_DIR={data_dir} .venv/bin/twin search '...'")


if __name__ == "__main__":
    main()
