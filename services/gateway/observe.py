"""Watching answers: every chat/generate request leaves a prompt-monitoring record (an MLflow
trace, llm_twin.prompt_traces: tokens, time to first token, latency, sources, the caller's key
name), updates the Serve metrics, and a sampled share of chat answers is judged in the background
when a judge is set.

Transport-free: the prompt log, the metrics and the judge are passed in (none of them: nothing
is recorded)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar

from opentelemetry import trace

from llm_twin.keys import Caller
from llm_twin.monitoring import PromptRecord
from llm_twin.prompt_traces import PromptTraces
from services.generation.api import Delta

from .response_ids import ResponseIds

log = logging.getLogger(__name__)
current_caller: ContextVar[Caller | None] = ContextVar("current_caller", default=None)


def trace_id() -> str | None:
    """The current trace id (the record leads to its trace), None without tracing."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.trace_id else None


class Observer:
    def __init__(self, prompt_log: PromptTraces | None = None, metrics=None, judge=None,
                 judge_sample_ratio: float = 0.0, ids: ResponseIds | None = None):
        self.ids = ids or ResponseIds.random()
        self.prompt_log = prompt_log
        self.metrics = metrics
        self.judge = judge
        self.judge_sample_ratio = judge_sample_ratio
        self._tasks: set[asyncio.Task] = set()

    def start(self, operation: str, twin: str, question: str, transport: str, sources=()) -> dict:
        """What is known when a request starts; ``watch`` completes it."""
        caller = current_caller.get()
        return {"id": self.ids.new(), "trace_id": trace_id(), "time": time.time(), "started": time.perf_counter(),
                "operation": operation,
                "twin": twin, "question": question, "transport": transport, "key": caller.name if caller else None,
                "sources": [{"id": s.chunk_id, "link": s.link, "similarity": round(float(s.similarity), 4)}
                            for s in sources], "passages": [s.text for s in sources],
                "author": sources[0].author if sources else twin}

    async def watch(self, base: dict, deltas: AsyncIterator[Delta], model: str) -> AsyncIterator[Delta]:
        """The deltas, passed through; at the end (finished, failed or left) the record is written."""
        parts, last, first_at = [], None, None
        try:
            async for delta in deltas:
                if first_at is None:
                    first_at = time.perf_counter()
                if delta.index == 0:  # the record keeps choice 0 of a request for n choices
                    parts.append(delta.text)
                    last = delta
                yield delta
        finally:
            await deltas.aclose()
            reason = (last.finish_reason if last else None) or "cancelled"
            self.finish(base, model, "".join(parts), reason, last.prompt_tokens if last else 0,
                        last.completion_tokens if last else 0, first_at, base.get("adapter_version"))

    def finish(self, base: dict, model: str, answer: str, reason: str, prompt_tokens: int, completion_tokens: int,
               first_at: float | None = None, adapter_version: str | None = None) -> None:
        now = time.perf_counter()
        record = PromptRecord(
            id=base["id"], time=base["time"], operation=base["operation"], twin=base["twin"], model=model,
            question=base["question"], answer=answer, finish_reason=reason, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, ttft_s=round(first_at - base["started"], 4) if first_at else None,
            latency_s=round(now - base["started"], 4), transport=base["transport"], adapter_version=adapter_version,
            key=base["key"], sources=base["sources"], trace_id=base.get("trace_id"))
        try:
            if self.metrics is not None:
                self.metrics.observe(record)
            if self.prompt_log is not None and self.prompt_log.sampled():
                self.prompt_log.record(record, base["passages"])
                if (self.judge is not None and record.operation == "chat" and base["passages"]
                        and random.random() < self.judge_sample_ratio):
                    self._judge_later(record, base["passages"], base["author"])
        except Exception:  # noqa: BLE001 - monitoring never fails the answer it watches
            log.exception("recording request %s failed", record.id)

    def feedback(self, score: int) -> None:
        if self.metrics is not None:
            self.metrics.feedback(score)

    def _judge_later(self, record: PromptRecord, passages: list[str], author: str) -> None:
        async def run():
            verdict = await asyncio.to_thread(self.judge.judge, record.question, record.answer, passages, author)
            if verdict.scores is not None:
                self.prompt_log.judged(record.id, verdict.scores, verdict.judge)
            else:
                log.warning("online judge left %s unscored: %s", record.id, verdict.error)

        try:
            task = asyncio.get_running_loop().create_task(run())
        except RuntimeError:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
