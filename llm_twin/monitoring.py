"""Prompt monitoring: what one answered request records, and what `twin monitor` makes of them.

Records are stored as MLflow traces (llm_twin.prompt_traces: feedback and judge scores are
assessments on them); this module holds the record's shape and the summary, which know nothing
of where records are kept.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

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
                       "latency_s": r["latency_s"], "judge": r.get("judge"), "trace": r.get("mlflow_trace_id")}
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

