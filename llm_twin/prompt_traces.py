"""Prompt monitoring in MLflow: every answered request is a trace, feedback and judge scores are
assessments on it.

A trace has three spans: the request (``chat`` / ``generate`` / ``completion``: the question and the
answer, tags for twin, transport, key name, operation, response id), ``retrieval`` (the passages with
their links and similarity scores, for chats) and ``generation`` (model, adapter version, token
counts, time to first token, finish reason). Its id is the request's OpenTelemetry trace id
(``tr-<32 hex>``: the id Tempo/Grafana shows) when the request was traced by the server, else
``tr-<response id>``. A caller's traceparent never chooses it (TWIN_TRUST_CLIENT_TRACE on: the
response id is used), so no caller can write into another's trace.

Traces go to the tracking server's OTLP endpoint (``/v1/traces``) in the twin's experiment, batched
by a background thread once a second; requests never wait for MLflow, and an unreachable server
loses nothing until the buffer's bound. Sampling, PII masking and retention work as before:
``sample_ratio`` of requests are kept (feedback and judge scores always), questions, answers and
comments are masked (llm_twin.pii), traces older than ``retention_days`` are deleted hourly.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import asdict

from llm_twin import pii, tracking
from llm_twin.monitoring import PromptRecord

log = logging.getLogger(__name__)
MAX_BUFFERED = 10_000  # records kept while the server is unreachable; the oldest go first beyond it
FEEDBACK_WAIT_S = 120  # feedback for a trace not written yet is retried this long
RECORD_ATTRIBUTE = "twin.record"  # the record's figures on the request span (what `twin monitor` reads)


def trace_id_of(record: PromptRecord, trust_client_trace: bool = False) -> str:
    if record.trace_id and not trust_client_trace:
        return f"tr-{record.trace_id}"
    return f"tr-{record.id}"


def _value(value):
    from opentelemetry.proto.common.v1 import common_pb2

    # MLflow reads span attributes as JSON (it wrote them so); plain strings stay readable too.
    return common_pb2.AnyValue(string_value=json.dumps(value, ensure_ascii=False, default=str))


def _span(trace: bytes, span_id: bytes, parent: bytes | None, name: str, start_s: float, end_s: float,
          attributes: dict, ok: bool = True):
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    return trace_pb2.Span(
        trace_id=trace, span_id=span_id, parent_span_id=parent or b"", name=name,
        start_time_unix_nano=int(start_s * 1e9), end_time_unix_nano=int(max(end_s, start_s) * 1e9),
        attributes=[common_pb2.KeyValue(key=k, value=_value(v)) for k, v in attributes.items() if v is not None],
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_OK if ok else trace_pb2.Status.STATUS_CODE_ERROR))


def spans(record: dict, trace_id: str, passages: list[str]) -> list:
    """The OTLP spans of one (masked) record."""
    import secrets

    trace = bytes.fromhex(trace_id.removeprefix("tr-"))
    root, retrieval, generation = (secrets.token_bytes(8) for _ in range(3))
    start, end = record["time"], record["time"] + record["latency_s"]
    figures = {k: v for k, v in record.items() if k not in ("question", "answer")}
    tags = {"twin": record["twin"], "transport": record["transport"], "operation": record["operation"],
            "response_id": record["id"], "key": record.get("key") or "", "finish_reason": record["finish_reason"],
            "otel_trace_id": record.get("trace_id") or ""}
    out = [_span(trace, root, None, record["operation"], start, end, {
        "mlflow.spanType": "CHAIN", "mlflow.spanInputs": {"question": record["question"], "twin": record["twin"]},
        "mlflow.spanOutputs": {"answer": record["answer"], "finish_reason": record["finish_reason"]},
        "user.id": record.get("key"), RECORD_ATTRIBUTE: figures,
        **{f"mlflow.traceTag.{k}": v for k, v in tags.items() if v}}, ok=record["finish_reason"] != "error")]
    if record["sources"]:
        documents = [{"page_content": text, "metadata": {"doc_uri": s["link"], "chunk_id": s["id"],
                                                         "score": s["similarity"]}}
                     for s, text in zip(record["sources"], passages or [""] * len(record["sources"]), strict=False)]
        # The sources were found before the request's clock started: a point span at its start.
        out.append(_span(trace, retrieval, root, "retrieval", start, start, {
            "mlflow.spanType": "RETRIEVER", "mlflow.spanInputs": {"query": record["question"]},
            "mlflow.spanOutputs": documents}))
    usage = {"input_tokens": record["prompt_tokens"], "output_tokens": record["completion_tokens"],
             "total_tokens": record["prompt_tokens"] + record["completion_tokens"]}
    out.append(_span(trace, generation, root, "generation", start, end, {
        "mlflow.spanType": "LLM", "mlflow.llm.model": record["model"], "mlflow.chat.tokenUsage": usage,
        "mlflow.spanOutputs": record["answer"], "gen_ai.response.finish_reasons": [record["finish_reason"]],
        "twin.adapter_version": record.get("adapter_version"), "twin.ttft_s": record.get("ttft_s")}))
    return out


class PromptTraces:
    """Thread-safe buffered writer (the same calls as the partition writer it replaced)."""

    def __init__(self, uri: str, *, sample_ratio: float = 1.0, retention_days: int = 30, mask_pii: bool = True,
                 flush_every_s: float = 1.0, trust_client_trace: bool = False):
        self.uri = uri
        self.sample_ratio, self.retention_days, self.mask_pii = sample_ratio, retention_days, mask_pii
        self.flush_every_s, self.trust_client_trace = flush_every_s, trust_client_trace
        self._records: list[tuple[str, dict, list[str]]] = []  # (twin, masked record, passages)
        self._assessments: list[tuple[float, str, object]] = []  # (first try, response id, Feedback)
        self._experiments: dict[str, str] = {}
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._last_cleanup = 0.0
        self._client = None

    @classmethod
    def from_settings(cls, settings) -> PromptTraces | None:
        if not settings.monitoring.enabled:
            return None
        uri = tracking.resolve_uri(settings)
        if uri is None:
            log.warning("prompt monitoring is on but no MLflow server is configured or running: requests are not "
                        "recorded (set TWIN_TRACKING_URI, or run `twin serve`, which starts one)")
            return None
        return cls(uri, sample_ratio=settings.monitoring.sample_ratio,
                   retention_days=settings.monitoring.retention_days, mask_pii=settings.monitoring.mask_pii,
                   trust_client_trace=settings.gateway.trust_client_trace)

    @property
    def client(self):
        if self._client is None:
            self._client = tracking.client(self.uri)
        return self._client

    def sampled(self) -> bool:
        return self.sample_ratio >= 1.0 or random.random() < self.sample_ratio

    def record(self, record: PromptRecord, passages: list[str] | None = None) -> None:
        row = asdict(record)
        if self.mask_pii:
            row["question"], mapping = pii.mask(row["question"])
            row["answer"], _ = pii.mask(row["answer"], mapping)
        row["mlflow_trace_id"] = trace_id_of(record, self.trust_client_trace)
        self._add(lambda: self._records.append((record.twin, row, list(passages or []))))

    def feedback(self, response_id: str, score: int, comment: str = "", key: str | None = None) -> None:
        from mlflow.entities import AssessmentSource, Feedback

        comment = pii.mask(comment)[0] if self.mask_pii and comment else comment
        value = Feedback(name="user_feedback", value=score, rationale=comment or None,
                         source=AssessmentSource(source_type="HUMAN", source_id=key or "anonymous"))
        self._add(lambda: self._assessments.append((time.time(), response_id, value)))

    def judged(self, response_id: str, scores: dict, judge: str) -> None:
        from mlflow.entities import AssessmentSource, Feedback

        for name, score in scores.items():
            value = Feedback(name=f"judge_{name}", value=score,
                             source=AssessmentSource(source_type="LLM_JUDGE", source_id=judge))
            self._add(lambda v=value: self._assessments.append((time.time(), response_id, v)))

    def _add(self, append) -> None:
        with self._lock:
            append()
            del self._records[:-MAX_BUFFERED]
            del self._assessments[:-MAX_BUFFERED]
        self.start(prepare=False)  # a quiet server still writes its last records within a second

    def start(self, prepare: bool = True) -> None:
        """Start the background writer now (a server calls it as it starts): with ``prepare`` it
        first loads MLflow's client and deletes expired traces, work that otherwise came with the
        first flush. Why: on 2 cores that first flush (~0.5 s of CPU) ran beside the first burst of
        requests and slowed its decoding by ~20 %."""
        with self._lock:
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever, args=(prepare,), name="prompt-traces",
                                                 daemon=True)
                self._flusher.start()

    def _prepare(self) -> None:
        try:
            self.client  # noqa: B018 - imports mlflow and builds the client once
            self._last_cleanup = time.time()
            self.cleanup()
        except Exception:  # noqa: BLE001 - the tracking server may still be starting: the next flush retries
            self._last_cleanup = 0.0
            log.info("prompt traces: the tracking server at %s is not answering yet; retried with the first flush",
                     self.uri)

    def _flush_forever(self, prepare: bool) -> None:
        if prepare:
            self._prepare()
        while True:
            time.sleep(self.flush_every_s)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - an unreachable server loses no request; retried next tick
                log.exception("writing prompt traces to %s failed", self.uri)

    def experiment(self, twin: str) -> str:
        if twin not in self._experiments:
            self._experiments[twin] = tracking.experiment_id(self.client, twin or "base")
        return self._experiments[twin]

    def flush(self) -> None:
        """Write buffered traces, then the assessments whose traces exist."""
        with self._lock:
            records, self._records = self._records, []
        try:
            self._export(records)
        except Exception:
            with self._lock:  # kept for the next flush
                self._records[:0] = records
            raise
        self._assess()
        if time.time() - self._last_cleanup > 3600:
            self._last_cleanup = time.time()
            self.cleanup()

    def _export(self, records: list) -> None:
        import httpx
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from opentelemetry.proto.trace.v1 import trace_pb2

        by_twin: dict[str, list] = {}
        for twin, row, passages in records:
            by_twin.setdefault(twin, []).extend(spans(row, row["mlflow_trace_id"], passages))
        for twin, rows in by_twin.items():
            body = ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
                scope_spans=[trace_pb2.ScopeSpans(spans=rows)])]).SerializeToString()
            reply = httpx.post(f"{self.uri}/v1/traces", content=body, timeout=30,
                               headers={"content-type": "application/x-protobuf",
                                        "x-mlflow-experiment-id": self.experiment(twin)})
            reply.raise_for_status()

    def _assess(self) -> None:
        from mlflow.tracing.client import TracingClient

        with self._lock:
            pending, self._assessments = self._assessments, []
        if not pending:
            return
        client, left = TracingClient(self.uri), []
        for first, rid, value in pending:
            trace_id = self.find(rid)
            if trace_id is None:
                if time.time() - first < FEEDBACK_WAIT_S:
                    left.append((first, rid, value))  # its trace may still be in a replica's buffer
                else:
                    log.warning("no trace for response %s after %d s: its %s is dropped", rid, FEEDBACK_WAIT_S,
                                value.name)
                continue
            client.log_assessment(trace_id, value)
        with self._lock:
            self._assessments[:0] = left

    def find(self, response_id: str) -> str | None:
        """The trace of a response id (any twin's experiment), or None."""
        if not set(response_id) <= set("0123456789abcdef"):
            return None  # ids are checked before this; a quote would break the filter
        experiments = twin_experiments(self.client)
        if not experiments:
            return None
        found = self.client.search_traces(locations=experiments, max_results=1,
                                          filter_string=f"tag.response_id = '{response_id}'", include_spans=False)
        return found[0].info.trace_id if found else None

    def cleanup(self, now: float | None = None) -> int:
        """Delete traces older than the retention period; -> how many."""
        cutoff = int(((now or time.time()) - self.retention_days * 86400) * 1000)
        return sum(self.client.delete_traces(e, max_timestamp_millis=cutoff) or 0
                   for e in twin_experiments(self.client))


def twin_experiments(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments(filter_string="name LIKE 'twin-%'")]


def load(uri: str, since: float, twin: str | None = None) -> list[dict]:
    """Request records since a time (the dicts `twin monitor` summarizes), each with its "feedback"
    (list of {"score", "comment"}) and "judge" (scores by name, or None)."""
    client = tracking.client(uri)
    if twin is not None:
        found = client.get_experiment_by_name(tracking.twin_name(twin))
        experiments = [found.experiment_id] if found else []
    else:
        experiments = twin_experiments(client)
    if not experiments:
        return []
    records, token = [], None
    while True:
        page = client.search_traces(locations=experiments, filter_string=f"timestamp_ms >= {int(since * 1000)}",
                                    max_results=500, page_token=token)
        for trace in page:
            record = _record(trace)
            if record is not None and (twin is None or record["twin"] == twin):
                records.append(record)
        token = page.token
        if not token:
            break
    return sorted(records, key=lambda r: r["time"])


def _record(trace) -> dict | None:
    root = next((s for s in trace.data.spans if s.parent_id is None), None)
    figures = root.get_attribute(RECORD_ATTRIBUTE) if root else None
    if not isinstance(figures, dict):
        return None  # a trace some other client wrote into the experiment
    inputs, outputs = root.inputs or {}, root.outputs or {}
    record = {**figures, "question": inputs.get("question", ""), "answer": outputs.get("answer", ""),
              "mlflow_trace_id": trace.info.trace_id, "feedback": [], "judge": None}
    judge = {}
    for a in trace.info.assessments or []:
        if getattr(a, "valid", True) is False or a.feedback is None:
            continue
        if a.name == "user_feedback":
            record["feedback"].append({"score": int(a.feedback.value), "comment": a.rationale or ""})
        elif a.name.startswith("judge_"):
            judge[a.name.removeprefix("judge_")] = a.feedback.value
    record["judge"] = judge or None
    return record
