"""The guard Ray Serve's HTTP proxy wraps around every request (services/gateway/proxy_guard.py),
driven over ASGI with small apps that send what Serve's proxy sends in each case (read from Ray
2.60's proxy: a dead replica makes it send nothing, or stop a started stream; a full queue makes it
answer 503 in plain text). The same guard in a real `twin serve` is exercised by
tests/integration/test_serving_faults.py and test_attacks.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.gateway.proxy_guard import ProxyGuard, trust_client_trace


def run(app, path: str = "/v1/generate", headers=()) -> tuple[list[dict], dict]:
    sent, seen = [], {}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def main():
        scope = {"type": "http", "path": path, "headers": list(headers)}

        async def inner(scope, receive, send):
            seen["headers"] = scope["headers"]
            await app(send)

        await ProxyGuard(inner)(scope, receive, send)

    asyncio.run(main())
    return sent, seen


def status_and_body(sent: list[dict]) -> tuple[int, bytes, dict]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, {k.decode(): v.decode() for k, v in start["headers"]}


def test_serve_sending_nothing_for_a_dead_replica_is_a_503_with_retry_after():
    async def nothing(send):
        return None

    status, body, headers = status_and_body(run(nothing)[0])
    assert status == 503 and headers["retry-after"] == "5" and "retry" in json.loads(body)["error"]["message"]


def test_serves_own_bare_500_becomes_503_and_the_platforms_500_stays():
    async def serve_500(send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"Internal Server Error"})

    async def ours_500(send):
        await send({"type": "http.response.start", "status": 500, "headers": [(b"x-twin-origin", b"gateway")]})
        await send({"type": "http.response.body", "body": b'{"error": {"message": "internal error: KeyError"}}'})

    assert status_and_body(run(serve_500)[0])[0] == 503
    status, body, _ = status_and_body(run(ours_500)[0])
    assert status == 500 and b"internal error" in body


def test_serves_plain_text_backpressure_gets_the_json_error_body():
    async def backpressure(send):
        await send({"type": "http.response.start", "status": 503, "headers": [(b"retry-after", b"2")]})
        await send({"type": "http.response.body",
                    "body": b"Request dropped due to backpressure (num_queued_requests=8)."})

    status, body, headers = status_and_body(run(backpressure)[0])
    assert status == 503 and headers["retry-after"] == "2" and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["message"].startswith("Request dropped due to backpressure")


def test_a_stream_cut_by_a_dead_replica_ends_with_an_error_event_and_done():
    async def cut(send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"x-twin-origin", b"gateway")]})
        await send({"type": "http.response.body", "body": b'data: {"delta": "Hel"}\n\n', "more_body": True})
        raise RuntimeError("ActorDiedError")

    status, body, _ = status_and_body(run(cut)[0])
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]" and "retry" in json.loads(events[-2])["error"]["message"]


def test_a_finished_response_passes_untouched():
    async def fine(send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-twin-origin", b"gateway")]})
        await send({"type": "http.response.body", "body": b'{"text": "hi"}'})

    sent, _ = run(fine)
    assert status_and_body(sent)[:2] == (200, b'{"text": "hi"}') and len(sent) == 2


@pytest.mark.parametrize("trusted, kept", [(False, False), (True, True)])
def test_a_callers_trace_headers_are_dropped_unless_trusted(monkeypatch, trusted, kept):
    if trusted:
        monkeypatch.setenv("TWIN_TRUST_CLIENT_TRACE", "true")
    else:
        monkeypatch.delenv("TWIN_TRUST_CLIENT_TRACE", raising=False)
    trust_client_trace.cache_clear()

    async def fine(send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-twin-origin", b"gateway")]})
        await send({"type": "http.response.body", "body": b"{}"})

    headers = [(b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"), (b"tracestate", b"x=y"),
               (b"authorization", b"Bearer k")]
    _, seen = run(fine, headers=headers)
    trust_client_trace.cache_clear()
    names = [n for n, _ in seen["headers"]]
    assert (b"traceparent" in names) is kept and (b"tracestate" in names) is kept and b"authorization" in names


def test_serves_route_listing_is_not_served():
    async def listing(send):
        raise AssertionError("the route listing reached Serve")

    status, body, _ = status_and_body(run(listing, path="/-/routes")[0])
    assert status == 404 and json.loads(body)["error"]["code"] == 404
