"""What Ray Serve's proxies do before a request reaches the platform's code.

Ray Serve runs the HTTP and gRPC proxies itself; two of its hooks let the platform act there:

- HTTP: ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names :func:`middlewares`, ASGI middleware
  the proxy wraps around everything it serves (its own ``/-/routes`` too).
- gRPC: the first servicer function (``grpc_ingress``) wraps every handler; it calls
  :func:`client_metadata` on the caller's metadata.
- ``RAY_SERVE_GRPC_MAX_MESSAGE_SIZE`` sets the gRPC server's receive limit: a larger message is
  refused with RESOURCE_EXHAUSTED while it arrives, before it is buffered or anyone is asked who
  sent it (Ray's default is 2 GiB). The platform sets it to the HTTP body limit
  (:func:`proxy_env`, for `twin serve`, the operator's RayServices and the chart).

In the proxy: a caller's ``traceparent``/``tracestate`` is dropped unless `TWIN_TRUST_CLIENT_TRACE`
is set (a client would otherwise choose the trace id and force sampling past the server's ratio),
Serve's route listing ``/-/routes`` answers 404 (it names the applications to anyone), a 500
that Serve's proxy makes itself (the replica it called died: RayActorError) becomes 503 with
Retry-After, as a gRPC INTERNAL from the proxy becomes UNAVAILABLE (`grpc_ingress`), and Serve's
other answers of its own (a full queue's 503, a timeout's 408) get the platform's JSON error body. The
proxies read their settings from the environment they inherit (TWIN_*), like every Serve process.
"""

from __future__ import annotations

import functools
import json
import logging

ROUTES_PATH = "/-/routes"
# Every response of the platform's own HTTP app carries this header (http_guards.Origin): a 500
# without it was made by Serve's proxy itself, which answers 500 when the replica it called died.
ORIGIN_HEADER = b"x-twin-origin"
LOST = ("the gateway replica stopped while working on this request (Serve is starting another): retry in "
        "{seconds} s")
RETRY_AFTER_S = 5
TRACE_HEADERS = (b"traceparent", b"tracestate")
IMPORT_PATH = "services.gateway.proxy_guard:middlewares"
log = logging.getLogger(__name__)


def proxy_env(max_request_bytes: int) -> dict[str, str]:
    """Environment for every Ray process of the platform (the proxies read it when they start)."""
    return {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(int(max_request_bytes)),
            "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": IMPORT_PATH}


@functools.cache
def trust_client_trace() -> bool:
    """The setting `trust_client_trace`, as the proxy process sees it (its environment: TWIN_*),
    read once per process: the gRPC guard asks on every call."""
    from llm_twin.config import Settings

    return Settings().gateway.trust_client_trace


def proxy_status(code, details: str | None):
    """(code, details) the gRPC proxy should send: its own INTERNAL (the replica it called died;
    the platform's own internal errors say "internal error: ...") becomes UNAVAILABLE with a retry
    hint."""
    import grpc

    if code == grpc.StatusCode.INTERNAL and not (details or "").startswith("internal error:"):
        return grpc.StatusCode.UNAVAILABLE, LOST.format(seconds=RETRY_AFTER_S)
    return code, details


def client_metadata(metadata) -> list[tuple[str, str]]:
    """A gRPC caller's metadata as the proxy should see it (trace headers dropped by policy)."""
    items = list(metadata or ())
    if trust_client_trace():
        return items
    return [(k, v) for k, v in items if k.lower() not in ("traceparent", "tracestate")]


class ProxyGuard:
    """Pure ASGI middleware for Serve's HTTP proxy."""

    def __init__(self, app):
        self.app = app
        self.trust_trace = trust_client_trace()

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        if scope.get("path") == ROUTES_PATH:
            return await _send_json(send, 404, {"error": {"message": "not found", "code": 404}})
        if not self.trust_trace:
            headers = scope.get("headers") or []
            if any(name.lower() in TRACE_HEADERS for name, _ in headers):
                scope = {**scope, "headers": [(n, v) for n, v in headers if n.lower() not in TRACE_HEADERS]}
        state = {"replaced": False, "started": None, "finished": False, "own_error": None}

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                ours = any(n.lower() == ORIGIN_HEADER for n, _ in headers)
                if message.get("status") == 500 and not ours:
                    state["replaced"] = True
                    await _send_json(send, 503, {"error": {"message": LOST.format(seconds=RETRY_AFTER_S),
                                                           "type": "unavailable", "code": 503}})
                    return
                if message.get("status", 200) >= 400 and not ours:
                    # Serve's own answer (408 timeout, 503 backpressure) is plain text: held to be sent
                    # as the platform's JSON error body, its Retry-After kept.
                    state["own_error"] = {"start": message, "body": b""}
                    return
                state["started"] = message
            elif message["type"] == "http.response.body" and state["own_error"] is not None:
                state["own_error"]["body"] += message.get("body", b"")
                if not message.get("more_body", False):
                    state["replaced"] = True
                    await _send_own_error(send, state["own_error"])
                return
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["finished"] = True
            if not state["replaced"]:
                await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception as exc:  # noqa: BLE001 - answered below: uvicorn would answer a bare 500
            log.warning("request failed in Serve's proxy: %s", exc)
        finally:
            # Serve's proxy sends nothing at all when the replica it called died before answering
            # (RayActorError: it only answers 408, 429 and 503 itself); uvicorn then answers a bare 500.
            if state["started"] is None and not state["replaced"] and state["own_error"] is None:
                state["replaced"] = True
                try:
                    await _send_json(send, 503, {"error": {"message": LOST.format(seconds=RETRY_AFTER_S),
                                                           "type": "unavailable", "code": 503}})
                except Exception as exc:  # noqa: BLE001 - the client is gone
                    log.debug("client gone before the 503: %s", exc)
            # A stream whose replica died after it started: Serve's proxy just stops. An SSE client
            # gets an error event saying so and the end of the stream instead of a cut connection.
            if state["started"] is not None and not state["finished"] and not state["replaced"]:
                types = [v for n, v in state["started"].get("headers") or [] if n.lower() == b"content-type"]
                tail = b""
                if types and types[0].startswith(b"text/event-stream"):
                    error = {"error": {"message": LOST.format(seconds=RETRY_AFTER_S), "type": "unavailable",
                                       "code": 503}}
                    tail = b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n"
                try:
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
                except Exception as exc:  # noqa: BLE001 - the client is gone too
                    log.debug("client gone before the stream's end: %s", exc)


async def _send_own_error(send, held: dict) -> None:
    status = held["start"]["status"]
    message = held["body"].decode("utf-8", "replace").strip()[:1000] or f"HTTP {status}"
    retry = [v for n, v in held["start"].get("headers") or [] if n.lower() == b"retry-after"]
    body = json.dumps({"error": {"message": message, "type": "unavailable" if status >= 500 else "request_error",
                                 "code": status}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry or status == 503:
        headers.append((b"retry-after", retry[0] if retry else b"%d" % RETRY_AFTER_S))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"%d" % RETRY_AFTER_S))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def middlewares() -> list:
    """Ray Serve's HTTP proxy callback: the middleware it wraps around every request."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyGuard)]
