"""Tracing benchmark (part of `make bench`): what prompt traces in MLflow cost.

- served: 8 concurrent chat clients' tokens/s with prompt monitoring on (every request an MLflow
  trace) against the same platform with it off (TWIN_MONITORING_ENABLED=false), one after the other
  in this run, medians of rounds (goal: on >= 0.97 of off);
- one traced request's logging, in process against a real local MLflow server: the request path's
  share (masking and queueing a record), the background writer's share per record (OTLP spans built
  and posted in batches) and one feedback (the trace looked up by response id, the assessment logged).

Needs nothing from ../shared: it serves the sample corpus.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROUNDS = 2  # x 8 clients: 16 distinct questions per platform (bench_serving has 18)
RECORDS = 200
FEEDBACK = 20


def _served(model: str, monitoring: bool, questions) -> list[float]:
    from .bench_serving import CLIENTS, WARM_UP_QUESTION, _chat_throughput
    from .local_serving import ServeProcess
    from .sample_corpus import index_sample

    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        data_dir = Path(tmp)
        index_sample(data_dir)
        platform = ServeProcess(data_dir, 9310, 8310, log=subprocess.DEVNULL,
                                env={"TWIN_GENERATION_MODEL": model,
                                     "TWIN_MONITORING_ENABLED": str(monitoring).lower()}).start()
        try:
            try:
                platform.wait_ready(600)
            except RuntimeError as exc:
                sys.exit(f"make bench: {exc} (run `twin serve` by hand to see why)")
            _chat_throughput(platform.grpc, [WARM_UP_QUESTION], 8)
            fresh = iter(questions)
            return [_chat_throughput(platform.grpc, [next(fresh) for _ in range(CLIENTS)], 48)
                    for _ in range(ROUNDS)]
        finally:
            platform.stop()


def _logging_cost() -> dict[str, float]:
    from llm_twin import tracking
    from llm_twin.monitoring import PromptRecord
    from llm_twin.prompt_traces import PromptTraces

    with tempfile.TemporaryDirectory(prefix="twin-bench-mlflow-") as tmp:
        uri, pid = tracking.start_local(tmp, say=lambda _: None)
        try:
            log = PromptTraces(uri, flush_every_s=3600)  # flushed by hand below
            twin = f"bench-{uuid.uuid4().hex[:6]}"
            sources = [{"id": f"c{i}", "link": f"https://mara.example/p{i}", "similarity": 0.5} for i in range(4)]
            ids = [uuid.uuid4().hex for _ in range(RECORDS)]
            started = time.perf_counter()
            for rid in ids:
                log.record(PromptRecord(
                    id=rid, time=time.time(), operation="chat", twin=twin, model="SmolLM2-135M-Instruct",
                    question="How should I cut documents into chunks? Mail me at ada@example.com",
                    answer="By headings, with a little overlap. " * 12, finish_reason="stop", prompt_tokens=300,
                    completion_tokens=128, ttft_s=0.2, latency_s=3.0, transport="grpc", key="alice",
                    sources=sources, trace_id=uuid.uuid4().hex), passages=["A passage of the author's. " * 20] * 4)
            queued = (time.perf_counter() - started) / RECORDS
            started = time.perf_counter()
            log.flush()
            written = (time.perf_counter() - started) / RECORDS
            for rid in ids[:FEEDBACK]:
                log.feedback(rid, 1, "good")
            started = time.perf_counter()
            log.flush()
            feedback = (time.perf_counter() - started) / FEEDBACK
        finally:
            tracking.stop_local(tmp, pid)
    return {"queued": queued, "written": written, "feedback": feedback}


def run() -> None:
    from llm_twin.config import Settings, configure_torch_threads
    from services.generation.model_store import resolve_model

    from .bench_serving import CHAT_QUESTIONS, CLIENTS

    settings = Settings()
    configure_torch_threads(settings)
    model = resolve_model(settings.generation.model, settings.data_dir)
    cost = _logging_cost()
    print(f"tracing: one traced request's logging: {cost['queued'] * 1e6:.0f} us on the request path (PII masking "
          f"and queueing), {cost['written'] * 1e3:.2f} ms in the background writer (OTLP spans to MLflow, batches "
          f"of {RECORDS}); one feedback {cost['feedback'] * 1e3:.1f} ms (trace found by response id, assessment "
          "logged)", flush=True)
    print(f"tracing: serving with prompt monitoring off, then on ({ROUNDS} rounds of {CLIENTS} chat clients) ...",
          flush=True)
    need = CLIENTS * ROUNDS
    off = _served(model, False, CHAT_QUESTIONS[:need])
    on = _served(model, True, CHAT_QUESTIONS[:need])
    off_median, on_median = statistics.median(off), statistics.median(on)
    print(f"tracing: {CLIENTS} concurrent chat clients with every request an MLflow trace {on_median:.1f} tok/s / "
          f"with monitoring off {off_median:.1f} tok/s = {on_median / off_median:.3f} (goal >= 0.97; rounds on "
          f"{', '.join(f'{v:.1f}' for v in on)}, off {', '.join(f'{v:.1f}' for v in off)})")


if __name__ == "__main__":
    run()
