"""Serve metrics for answers (Ray exports them to Prometheus with the rest of Ray's metrics;
the chart's Grafana dashboard has panels for them): requests, latency and time-to-first-token
histograms, tokens, answers without sources, feedback."""

from __future__ import annotations

from ray.serve import metrics

LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120]


class ServeMetrics:
    def __init__(self):
        keys = ("twin", "operation", "finish_reason")
        self.requests = metrics.Counter("twin_requests", description="Answered requests.", tag_keys=keys)
        self.latency = metrics.Histogram("twin_request_latency_seconds", description="Whole request latency.",
                                         boundaries=LATENCY_BUCKETS, tag_keys=("twin", "operation"))
        self.ttft = metrics.Histogram("twin_time_to_first_token_seconds", description="Time to the first token.",
                                      boundaries=LATENCY_BUCKETS, tag_keys=("twin", "operation"))
        self.tokens = metrics.Counter("twin_tokens", description="Prompt and completion tokens.",
                                      tag_keys=("twin", "kind"))
        self.no_sources = metrics.Counter("twin_no_source_answers", description="Chats where nothing the twin "
                                          "wrote was relevant.", tag_keys=("twin",))
        self.feedback_votes = metrics.Counter("twin_feedback", description="User feedback by score.",
                                              tag_keys=("score",))

    def observe(self, record) -> None:
        tags = {"twin": record.twin or "-", "operation": record.operation}
        self.requests.inc(1, tags={**tags, "finish_reason": record.finish_reason})
        self.latency.observe(record.latency_s, tags=tags)
        if record.ttft_s is not None:
            self.ttft.observe(record.ttft_s, tags=tags)
        for kind, count in (("prompt", record.prompt_tokens), ("completion", record.completion_tokens)):
            if count > 0:  # a Ray counter only moves forward
                self.tokens.inc(count, tags={"twin": tags["twin"], "kind": kind})
        if record.finish_reason == "no_sources":
            self.no_sources.inc(1, tags={"twin": tags["twin"]})

    def feedback(self, score: int) -> None:
        self.feedback_votes.inc(1, tags={"score": str(score)})
