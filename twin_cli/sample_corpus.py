"""The sample corpus `make demo` and the tests serve: a fictional author's blog (20 short
articles as HTML pages with an RSS feed) and a small git repository of their code.

Written by the project itself so that the demo needs nothing from outside: no network, no
`../shared`. Mara Quill is invented; any resemblance is a coincidence.
"""

from __future__ import annotations

import subprocess
from html import escape
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
    "evaluation-sets-first": ("Write the evaluation set first", [
        "Before I change a retrieval pipeline I write twenty questions whose answers I know.",
        "Hit rate at five and mean reciprocal rank on that set tell me whether a change helped or just felt clever.",
        "The set lives in the repository next to the code, so every pull request can be measured the same way.",
    ]),
    "one-trace-per-request": ("One trace per request", [
        "A request that crosses five services should leave one trace, not five unrelated logs.",
        "I pass the W3C traceparent header through every hop, including queues and background jobs.",
        "When latency spikes, the trace shows which span grew; the logs only show that something was slow.",
    ]),
    "on-call-without-tears": ("On-call without tears", [
        "Every page must be actionable: if nobody needs to do anything, it should be a ticket, not a page.",
        "I keep a runbook link in every alert and delete alerts nobody acted on for a month.",
        "A calm handover note at the end of a shift is worth more than a heroic night.",
    ]),
    "code-review-as-teaching": ("Code review as teaching", [
        "I review code to share context, not to prove I am smart.",
        "Comments that ask a question get better answers than comments that give orders.",
        "Small pull requests get careful reviews; thousand-line pull requests get rubber stamps.",
    ]),
    "feature-flags-with-expiry-dates": ("Feature flags with expiry dates", [
        "Every feature flag I add gets an owner and an expiry date in its definition.",
        "Flags that outlive their launch turn into hidden configuration that nobody dares to remove.",
        "Once a quarter I delete expired flags and the code paths behind them.",
    ]),
    "cache-invalidation-in-practice": ("Cache invalidation in practice", [
        "I key caches by a hash of everything that changes the answer, including the model version.",
        "Content-addressed keys make invalidation automatic: new inputs simply miss the cache.",
        "A cache without a size limit is a memory leak with good intentions.",
    ]),
    "docs-that-people-read": ("Docs that people read", [
        "The first screen of a README should say what the thing does and show the one command that runs it.",
        "I write docs for the tired engineer at two in the morning, not for the reviewer.",
        "Examples that run in CI never go stale; prose examples always do.",
    ]),
    "data-contracts-between-teams": ("Data contracts between teams", [
        "A data contract is a schema plus a promise about how and when it may change.",
        "Producers version their events and keep the old version alive until consumers have moved.",
        "Breaking changes announced in a chat channel are not contracts; tests that fail are.",
    ]),
    "blameless-postmortems": ("Blameless postmortems", [
        "A postmortem asks how the system let a person make the mistake, not who made it.",
        "I write the timeline first, from logs and traces, before anyone offers an opinion.",
        "Every postmortem ends with at most three actions, each with an owner and a date.",
    ]),
    "gpu-costs-are-a-design-input": ("GPU costs are a design input", [
        "I price a feature in GPU hours before I design it, the same way I would price storage.",
        "Batching requests and scaling replicas to zero at night cut our inference bill by more than half.",
        "A smaller fine-tuned model often beats a larger general one on cost and on the task.",
    ]),
    "prompt-templates-belong-in-code": ("Prompt templates belong in code", [
        "I keep prompt templates in one module under version control, never in a dashboard.",
        "Training data and serving must use the same template byte for byte, or the model sees two different worlds.",
        "Changing a template is a code change with a review and an evaluation run.",
    ]),
    "flaky-tests-are-bugs": ("Flaky tests are bugs", [
        "A test that fails one time in fifty is telling you about a race, a timeout or shared state.",
        "I quarantine a flaky test for at most a week, with a ticket, and then fix it or delete it.",
        "Sleeping in tests hides races; waiting for a condition with a deadline exposes them.",
    ]),
    "database-migrations-without-downtime": ("Database migrations without downtime", [
        "I migrate in expand and contract steps: add the new column, write both, backfill, read the new, drop the old.",
        "Each step is deployable and reversible on its own.",
        "Backfills run in small batches with progress reporting, so they can be paused and resumed.",
    ]),
    "dashboards-that-answer-questions": ("Dashboards that answer questions", [
        "A dashboard should answer one question, such as whether users are getting fast answers right now.",
        "I put latency percentiles, error rate and traffic on the first row, and everything else below.",
        "If a graph never changed a decision, I remove it.",
    ]),
}
CODE = {
    "retry.py": "def retry(fn, attempts=3, backoff_s=0.5):\n    \"\"\"Call fn, retrying with exponential "
                "backoff.\"\"\"\n"
                "    import time\n    for attempt in range(attempts):\n        try:\n            return fn()\n"
                "        except OSError:\n            if attempt == attempts - 1:\n                raise\n"
                "            time.sleep(backoff_s * 2 ** attempt)\n",
    "README.md": "# mara-tools\n\nSmall helpers I use in every project: retries with backoff and a build log.\n",
}
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


def index_sample(data_dir: Path) -> None:
    """The sample corpus straight into the warehouse of ``data_dir``, then `twin index` in its own
    process (Milvus Lite stays locked by the process that opened the file, and the platform's
    retrieval replica opens it next)."""
    import os
    import subprocess
    import sys

    from llm_twin.config import Settings
    from llm_twin.warehouse import Warehouse

    put_posts(Warehouse(Settings(data_dir=data_dir).resolved_warehouse_uri))
    env = {**os.environ, "TWIN_DATA_DIR": str(data_dir)}
    done = subprocess.run([sys.executable, "-m", "twin_cli", "index"], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"twin index failed:\n{done.stdout}\n{done.stderr}")


def put_posts(warehouse) -> None:
    """The sample posts as crawled documents, straight into ``warehouse``."""
    from llm_twin.documents import RawDocument

    for slug, (title, paragraphs) in POSTS.items():
        link = f"https://mara.example/{slug}"
        warehouse.put(RawDocument.create(author=AUTHOR, category="article", source=link, link=link, title=title,
                                         text="\n\n".join(paragraphs)))
