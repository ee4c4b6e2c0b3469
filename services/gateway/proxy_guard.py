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
Serve's route listing ``/-/routes`` answers 404 (it names the applications to anyone), and a 500
that Serve's proxy makes itself (the replica it called died: RayActorError) becomes 503 with
Retry-After, as a gRPC INTERNAL from the proxy becomes UNAVAILABLE (`grpc_ingress`). The
proxies read their settings from the environment they inherit (TWIN_*), like every Serve process.
"""

from __future__ import annotations

import json
import os

ROUTES_PATH = "/-/routes"
# Every response of the platform's own HTTP app carries this header (http_guards.Origin): a 500
# without it was made by Serve's proxy itself, which answers 500 when the replica it called died.
ORIGIN_HEADER = b"x-twin-origin"
LOST = ("the gateway replica stopped while working on this request (Serve is starting another): retry in "
        "{seconds} s")
RETRY_AFTER_S = 5
TRACE_HEADERS = (b"traceparent", b"tracestate")
IMPORT_PATH = "services.gateway.proxy_guard:middlewares"


def proxy_env(max_request_bytes: int) -> dict[str, str]:
    """Environment for every Ray process of the platform (the proxies read it when they start)."""
    return {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(int(max_request_bytes)),
            "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": IMPORT_PATH}


def trust_client_trace() -> bool:
    return os.environ.get("TWIN_TRUST_CLIENT_TRACE", "").strip().lower() in ("1", "true", "yes", "on")


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
            body = b'{"error":{"message":"not found","code":404}}'
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if not self.trust_trace:
            headers = scope.get("headers") or []
            if any(name.lower() in TRACE_HEADERS for name, _ in headers):
                scope = {**scope, "headers": [(n, v) for n, v in headers if n.lower() not in TRACE_HEADERS]}
        replaced = False

        async def guarded_send(message):
            nonlocal replaced
            if message["type"] == "http.response.start" and message.get("status") == 500 and not any(
                    name.lower() == ORIGIN_HEADER for name, _ in message.get("headers") or []):
                replaced = True
                body = json.dumps({"error": {"message": LOST.format(seconds=RETRY_AFTER_S), "type": "unavailable",
                                             "code": 503}}).encode()
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"%d" % RETRY_AFTER_S),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            if replaced:
                return  # the proxy's own 500 body: already answered
            await send(message)

        return await self.app(scope, receive, guarded_send)


def middlewares() -> list:
    """Ray Serve's HTTP proxy callback: the middleware it wraps around every request."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyGuard)]
