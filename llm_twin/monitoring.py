"""Prompt monitoring: one record per answered request, feedback and judge scores beside it.

Layout under the artifact store (local folder or ``s3://``), append-only and partitioned by day:

    <artifact_uri>/monitoring/<kind>/date=YYYY-MM-DD/part-<time>-<random>.jsonl

``kind`` is ``requests`` (what was asked and answered), ``feedback`` (a user's -1/+1 on an answer)
or ``judge`` (online evaluation scores). Writers buffer and write whole part files (object stores
have no append); nothing written is ever rewritten. Readers join feedback and judge scores to
their request by id (the request's trace id, so a record leads to its trace in Tempo).
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import fsspec

from llm_twin import pii

KINDS = ("requests", "feedback", "judge")
MAX_COMMENT_CHARS = 2000


@dataclass
class PromptRecord:
    id: str                    # the response id the server made (32 hex; services/gateway/response_ids.py)
    time: float                # unix seconds when the request arrived
    operation: str             # chat | generate | completion
    twin: str
    model: str
    question: str
    answer: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None       # time to first token
    latency_s: float
    transport: str             # http | grpc
    adapter_version: str | None = None
    key: str | None = None     # the API key's name (None: loopback without keys)
    sources: list[dict] = field(default_factory=list)  # {"id", "link", "similarity"}
    trace_id: str | None = None  # the request's trace (32 hex), when traced

    @property
    def no_sources(self) -> bool:
        return self.finish_reason == "no_sources"


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


class PromptLog:
    """Thread-safe buffered writer. ``sample_ratio`` of requests are kept (feedback and judge
    scores always are); ``mask_pii`` masks e-mails, phones, keys... in question and answer
    (llm_twin.pii, as for the teacher); partitions older than ``retention_days`` are deleted."""

    def __init__(self, artifact_uri: str, *, sample_ratio: float = 1.0, retention_days: int = 30,
                 mask_pii: bool = True, flush_every_s: float = 1.0):
        self.root = f"{artifact_uri.rstrip('/')}/monitoring"
        self.sample_ratio = sample_ratio
        self.retention_days = retention_days
        self.mask_pii = mask_pii
        self.flush_every_s = flush_every_s
        self.fs, self.base = fsspec.core.url_to_fs(self.root)
        self._buffer: dict[tuple[str, str], list[str]] = {}
        self._lock = threading.Lock()
        self._last_cleanup = 0.0
        self._flusher: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings) -> PromptLog | None:
        if not settings.monitoring.enabled:
            return None
        return cls(settings.resolved_artifact_uri, sample_ratio=settings.monitoring.sample_ratio,
                   retention_days=settings.monitoring.retention_days, mask_pii=settings.monitoring.mask_pii)

    def sampled(self) -> bool:
        return self.sample_ratio >= 1.0 or random.random() < self.sample_ratio

    def record(self, record: PromptRecord) -> None:
        row = asdict(record)
        if self.mask_pii:
            row["question"], mapping = pii.mask(row["question"])
            row["answer"], _ = pii.mask(row["answer"], mapping)
        self._add("requests", record.time, row)

    def feedback(self, response_id: str, score: int, comment: str = "", key: str | None = None) -> None:
        now = time.time()
        self._add("feedback", now, {"id": response_id, "time": now, "score": score,
                                    "comment": pii.mask(comment)[0] if self.mask_pii else comment, "key": key})

    def judged(self, response_id: str, scores: dict, judge: str) -> None:
        now = time.time()
        self._add("judge", now, {"id": response_id, "time": now, "judge": judge, "scores": scores})

    def _add(self, kind: str, ts: float, row: dict) -> None:
        with self._lock:
            self._buffer.setdefault((kind, _day(ts)), []).append(json.dumps(row, ensure_ascii=False))
            if self._flusher is None:  # a quiet server still writes its last records within a second
                self._flusher = threading.Thread(target=self._flush_forever, name="prompt-log", daemon=True)
                self._flusher.start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.flush_every_s)
            try:
                if self._buffer:
                    self.flush()
            except Exception:  # noqa: BLE001 - an unreachable store loses no request; retried next tick
                logging.getLogger(__name__).exception("writing prompt records failed")

    def flush(self) -> None:
        with self._lock:
            buffer, self._buffer = self._buffer, {}
        for (kind, day), lines in buffer.items():
            folder = f"{self.base}/{kind}/date={day}"
            try:
                self.fs.makedirs(folder, exist_ok=True)
                name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.jsonl"
                with self.fs.open(f"{folder}/{name}", "w") as f:
                    f.write("\n".join(lines) + "\n")
            except Exception:
                with self._lock:  # kept for the next flush: records are not lost to a store hiccup
                    self._buffer.setdefault((kind, day), [])[:0] = lines
                raise
        if time.time() - self._last_cleanup > 3600:
            self._last_cleanup = time.time()
            self.cleanup()

    def cleanup(self, now: float | None = None) -> list[str]:
        """Delete day partitions older than the retention period; -> the partitions removed."""
        cutoff = _day((now or time.time()) - self.retention_days * 86400)
        removed = []
        for kind in KINDS:
            for path in self.fs.glob(f"{self.base}/{kind}/date=*"):
                if path.rsplit("date=", 1)[1] < cutoff:
                    self.fs.rm(path, recursive=True)
                    removed.append(path)
        return removed


def read(root: str, kind: str, since: float) -> list[dict]:
    """Rows of one kind from the partitions that may hold times >= ``since``."""
    fs, base = fsspec.core.url_to_fs(root)
    first = _day(since)
    rows = []
    for path in sorted(fs.glob(f"{base}/{kind}/date=*/*.jsonl")):
        if path.split("date=", 1)[1][:10] < first:
            continue
        with fs.open(path) as f:
            for line in f.read().decode("utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row.get("time", 0) >= since:
                        rows.append(row)
    return rows


def load(artifact_uri: str, since: float, twin: str | None = None) -> list[dict]:
    """Request records since a time, each with its "feedback" (list) and "judge" (latest scores)."""
    root = f"{artifact_uri.rstrip('/')}/monitoring"
    records = [r for r in read(root, "requests", since) if twin is None or r["twin"] == twin]
    by_id = {r["id"]: r for r in records}
    for r in records:
        r["feedback"], r["judge"] = [], None
    for row in read(root, "feedback", since):
        if row["id"] in by_id:
            by_id[row["id"]]["feedback"].append({"score": row["score"], "comment": row.get("comment", "")})
    for row in read(root, "judge", since):
        if row["id"] in by_id:
            by_id[row["id"]]["judge"] = row["scores"]
    return sorted(records, key=lambda r: r["time"])


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 4)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 4)


def summarize(records: list[dict], window_s: float) -> dict:
    """What `twin monitor` prints: rates, latency percentiles, tokens/s, no-source share,
    feedback and judge scores, the slowest and the worst-judged requests with their ids."""
    latency = [r["latency_s"] for r in records]
    ttft = [r["ttft_s"] for r in records if r.get("ttft_s") is not None]
    speeds = [r["completion_tokens"] / (r["latency_s"] - (r.get("ttft_s") or 0))
              for r in records if r["completion_tokens"] > 1 and r["latency_s"] - (r.get("ttft_s") or 0) > 0]
    feedback = [f["score"] for r in records for f in r["feedback"]]
    judged = [r for r in records if r.get("judge")]

    def judge_mean(r: dict) -> float:
        values = [v for v in r["judge"].values() if isinstance(v, int | float)]
        return sum(values) / len(values) if values else 0.0

    chats = [r for r in records if r["operation"] == "chat"]
    brief = lambda r: {"id": r["id"], "twin": r["twin"], "question": r["question"][:120],  # noqa: E731
                       "latency_s": r["latency_s"], "judge": r.get("judge")}
    return {
        "requests": len(records),
        "requests_per_minute": round(len(records) / (window_s / 60), 3) if window_s else None,
        "latency_s": {"p50": _percentile(latency, 50), "p95": _percentile(latency, 95)},
        "ttft_s": {"p50": _percentile(ttft, 50), "p95": _percentile(ttft, 95)},
        "tokens_per_s": round(statistics.median(speeds), 2) if speeds else None,
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "no_sources_share": round(sum(r["finish_reason"] == "no_sources" for r in chats) / len(chats),
                                  4) if chats else None,
        "feedback": {"count": len(feedback), "up": feedback.count(1), "down": feedback.count(-1),
                     "mean": round(sum(feedback) / len(feedback), 3) if feedback else None},
        "judge": {"count": len(judged), "mean": round(sum(map(judge_mean, judged)) / len(judged),
                                                      3) if judged else None},
        "slowest": [brief(r) for r in sorted(records, key=lambda r: -r["latency_s"])[:5]],
        "worst_judged": [brief(r) for r in sorted(judged, key=judge_mean)[:5]],
    }


def parse_since(value: str, now: float | None = None) -> float:
    """'90s', '15m', '1h', '7d' -> a unix time that long ago."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = value.strip().lower()
    if len(value) < 2 or value[-1] not in units or not value[:-1].replace(".", "", 1).isdigit():
        raise ValueError(f"--since {value!r}: use a number and a unit, e.g. 90s, 15m, 1h or 7d")
    return (now or time.time()) - float(value[:-1]) * units[value[-1]]

