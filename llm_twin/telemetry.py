"""OpenTelemetry for the platform, on top of Ray Serve's own tracing.

Ray Serve (2.60) creates the tracer provider in every proxy and replica, opens spans for each
proxied request and each replica call, and carries the context through deployment handles. We
plug into it rather than fight it: `twin serve` points ``RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH``
at :func:`span_processors` (a zero-argument function returning span processors, Serve's contract)
and sets the sampling ratio; our code then adds spans named by the semantic conventions
(``gen_ai.*``, ``rpc.*``) under whatever span Serve made current.

Spans leave over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``http/protobuf`` by default as
the specification says; ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` for gRPC). ``OTEL_SERVICE_NAME``
names the resource.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

EXPORTER_IMPORT_PATH = "llm_twin.telemetry:span_processors"
TRACER_NAME = "llm_twin"


def otlp_enabled() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def span_processors() -> list:
    """Ray Serve's exporter hook: one batching OTLP processor when an endpoint is configured."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if not otlp_enabled():
        return []
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
    return [BatchSpanProcessor(OTLPSpanExporter())]


def serve_tracing_env(sampling_ratio: float) -> dict[str, str]:
    """Environment for Ray's processes (set before Ray starts, inherited by every worker)."""
    if not otlp_enabled():
        return {}
    env = {
        "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH": EXPORTER_IMPORT_PATH,
        "RAY_SERVE_TRACING_SAMPLING_RATIO": str(sampling_ratio),
    }
    env.setdefault("OTEL_SERVICE_NAME", os.environ.get("OTEL_SERVICE_NAME", "llm-twin"))
    return env


def tracer():
    return trace.get_tracer(TRACER_NAME)


@contextlib.contextmanager
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes) -> Iterator[trace.Span]:
    """A child of the current span (Serve's, when inside a replica); errors mark it failed."""
    with tracer().start_as_current_span(name, kind=kind, record_exception=True,
                                        set_status_on_exception=False) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            current.set_attribute("error.type", type(exc).__name__)
            raise
