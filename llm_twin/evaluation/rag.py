"""End-to-end RAG evaluation (`twin eval rag`): every question through the platform's real chat
path (its OpenAI-compatible HTTP API: retrieval + generation), each answer judged, scores per
question and in aggregate (overall and per kind).

The chat endpoint and the judge are passed in, so the same loop runs against `twin serve`, a
cluster's gateway, or anything else that speaks the API.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from llm_twin.documents import author_slug

from .judge import context_scores
from .retrieval import Question

SCORES = ("faithfulness", "answer_relevance", "context_precision", "context_precision_gold", "context_recall",
          "accuracy", "style")


class ChatEndpointError(RuntimeError):
    pass


@dataclass
class ChatEndpoint:
    """POST <base_url>/v1/chat/completions with a bearer key (when one is given)."""

    base_url: str
    api_key: str | None = None
    max_tokens: int = 128
    timeout_s: float = 300

    def ask(self, twin: str, messages: list[dict]) -> dict:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            reply = httpx.post(f"{self.base_url.rstrip('/')}/v1/chat/completions", headers=headers,
                               timeout=self.timeout_s, json={"model": twin, "messages": messages, "temperature": 0,
                                                             "max_tokens": self.max_tokens})
        except httpx.HTTPError as exc:
            raise ChatEndpointError(f"cannot reach {self.base_url}: {exc} (is `twin serve` running?)") from exc
        if reply.status_code in (401, 403):
            raise ChatEndpointError(f"{self.base_url} refused the key ({reply.status_code}): set TWIN_API_KEY or --key")
        if reply.status_code != 200:
            raise ChatEndpointError(f"{self.base_url} answered {reply.status_code}: {reply.text[:300]}")
        return reply.json()


def evaluate_rag(questions: list[Question], endpoint: ChatEndpoint, judge, *, twin: str | None = None,
                 concurrency: int = 4,
                 progress: Callable[[Iterable], Iterable] = lambda it: it) -> tuple[list[dict], dict]:
    """-> (one row per question, in the questions' order; summary). ``concurrency`` questions are
    in flight at once (the platform decodes concurrent chats as one batch); a question's chat
    failing is recorded in its row ("error"); the run goes on."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval-rag") as pool:
        rows = list(progress(pool.map(lambda q: _evaluate_one(q, endpoint, judge, twin), questions)))
    return rows, summarize(rows, judge.name)


def _evaluate_one(q: Question, endpoint: ChatEndpoint, judge, twin: str | None) -> dict:
    name = q.author or twin
    row = {"question": q.question, "kind": q.kind, "twin": author_slug(name), "answer": "", "sources": [],
           "finish_reason": None, "latency_s": None, "scores": {}, "judge": judge.name, "error": None}
    started = time.perf_counter()
    try:
        reply = endpoint.ask(row["twin"], q.messages)
    except ChatEndpointError as exc:
        row["error"] = str(exc)
        return row
    row["latency_s"] = round(time.perf_counter() - started, 3)
    row["id"] = reply.get("id")
    row["answer"] = reply["choices"][0]["message"]["content"] or ""
    row["finish_reason"] = reply["choices"][0]["finish_reason"]
    sources = reply.get("sources") or []
    row["sources"] = [s["link"] for s in sources]
    row["scores"].update(context_scores(row["sources"], q.gold_links))
    if not sources:
        row["error"] = "no sources: the twin said it has not written about this (not judged)"
        return row
    if not row["answer"].strip():
        # Nothing to judge: an LLM judge would score an empty answer anyway (and the embedding
        # fallback cannot), so every judge records it the same way.
        row["error"] = "unscored: empty answer"
        return row
    verdict = judge.judge(q.question, row["answer"], [s["text"] for s in sources], sources[0]["author"])
    if verdict.scores is None:
        row["error"] = f"unscored: {verdict.error}"
    else:
        row["scores"].update(verdict.scores)
    return row


def _means(rows: list[dict]) -> dict:
    out = {}
    for key in SCORES:
        values = [r["scores"][key] for r in rows if isinstance(r["scores"].get(key), int | float)]
        if values:
            out[key] = round(sum(values) / len(values), 4)
    return out


def summarize(rows: list[dict], judge_name: str) -> dict:
    kinds: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        kinds[r["kind"]].append(r)
    latency = [r["latency_s"] for r in rows if r["latency_s"] is not None]
    return {"n": len(rows), "judge": judge_name, "fallback": judge_name == "embedding-fallback",
            "scored": sum(1 for r in rows if any(k in r["scores"] for k in ("faithfulness", "style"))),
            "unscored": sum(1 for r in rows if r["error"] and r["error"].startswith("unscored")),
            "failed": sum(1 for r in rows if r["error"] and not r["error"].startswith(("unscored", "no sources"))),
            "no_sources": sum(1 for r in rows if r["error"] and r["error"].startswith("no sources")),
            "mean_latency_s": round(sum(latency) / len(latency), 3) if latency else None,
            "scores": _means(rows), "kinds": {k: {"n": len(v), **_means(v)} for k, v in sorted(kinds.items())}}
