"""What every HTTP route passes first: the data plane it works on, the caller's API key
(:func:`allowed`), the body size limit (:class:`BodyLimit`) and a body that is valid Unicode
(:class:`UnicodeJSONRoute`)."""

import json

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from . import openai_format as oa
from .dataplane import DataPlane
from .status import TooLarge


def _plane_of(app) -> DataPlane:
    """The data plane: set on the app in tests; in Ray Serve, the replica's Gateway holds it (the
    replica serves a deserialized copy of this app, so module state would not reach it)."""
    found = getattr(app.state, "plane", None)
    if found is None:
        from ray import serve

        found = serve.get_replica_context().servable_object.plane
    return found


def plane(request: Request) -> DataPlane:
    return _plane_of(request.app)


def allowed(operation: str):
    """A route's guard: the caller's API key must cover ``operation`` (see auth.py)."""

    # async: it runs in the request's own task, so the caller it sets (a context variable) reaches the
    # monitoring record and its in-flight count lasts as long as the response (a sync dependency
    # would run on a thread-pool copy of the context).
    async def check(request: Request, dp: DataPlane = Depends(plane)) -> DataPlane:
        dp.authorize(request.headers.get("authorization"), request.client.host if request.client else None, operation,
                     request.headers.get("host", ""))
        return dp

    return Depends(check)


class Origin:
    """ASGI middleware: every response says it was made by the platform's app (`x-twin-origin`),
    so the proxy's guard can tell a 500 of Serve's own (a dead replica: answered 503) from ours."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def marked(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*(message.get("headers") or []), (b"x-twin-origin", b"gateway")]}
            await send(message)

        return await self.app(scope, receive, marked)


class BodyLimit:
    """ASGI middleware: a request body over ``TWIN_MAX_REQUEST_BYTES`` gets 413 before it is parsed,
    declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = _plane_of(scope["app"]).settings.gateway.max_request_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge(f"the request body exceeds {limit} bytes (TWIN_MAX_REQUEST_BYTES)")
            return message

        try:
            await self.app(scope, counted, send)
        except TooLarge:
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send, limit: int) -> None:
        body = JSONResponse(oa.error_body(f"the request body exceeds {limit} bytes (TWIN_MAX_REQUEST_BYTES)", 413),
                            status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})


class UnicodeJSONRequest(Request):
    """JSON allows an escaped lone UTF-16 surrogate ("\\ud800") that no UTF-8 text holds; Python
    parses it into a string that fails wherever it is encoded (a response, a span, a log line), which
    was a 500 after the request had already reached the platform. Refused as invalid JSON instead."""

    async def json(self):
        if not hasattr(self, "_json"):
            try:
                text = (await self.body()).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError("not UTF-8", "", exc.start) from None
            try:
                parsed = json.loads(text)
            except RecursionError:
                raise json.JSONDecodeError("nested too deeply", text, 0) from None
            try:
                json.dumps(parsed, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                position = text.lower().find("\\u" + f"{ord(exc.object[exc.start]):04x}")
                raise json.JSONDecodeError("a lone UTF-16 surrogate escape is not text", text, max(0, position)) \
                    from None
            self._json = parsed
        return self._json


class UnicodeJSONRoute(APIRoute):
    """Every API route reads its body through :class:`UnicodeJSONRequest`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def with_unicode_json(request: Request):
            return await handler(UnicodeJSONRequest(request.scope, request.receive))

        return with_unicode_json
