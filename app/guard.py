"""Request guard and metrics as a plain ASGI middleware.

Bodies over ``max_body_bytes`` are refused before the app reads them (by
Content-Length, or while a chunked body arrives), so is a NUL in the path or
query (supervisor/storable.py: the same on every stack) and any other control
character in the path; every request is counted and its time to the response
headers observed. Plain ASGI on purpose:
Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``) relays every
chunk of a streaming response through an extra task and memory stream, which
on an SSE stream of a busy run cost more than the stream itself.
"""

from __future__ import annotations

import re
import time
from typing import Any

from app.problems import problem

__all__ = ["Guard"]

_CONTROL = re.compile("[\x00-\x1f\x7f]")
# The method label of the request metrics: any other token a client sends counts as OTHER. A server
# that passes any method token through (h11: uvicorn without httptools) let each new one add series
# to the registry - unbounded memory and /metrics output, from clients that need no key.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Scope = dict[str, Any]
Message = dict[str, Any]


class Guard:
    def __init__(self, app: Any, *, max_body: int, metrics: Any) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"]
        path = scope.get("path", "")
        if "\x00" in path or b"%00" in scope.get("query_string", b""):
            # NUL in an id or a filter: PostgreSQL cannot even compare it (it answered 500), SQLite can
            return await self._refuse(scope, receive, send, "input.invalid",
                                      "NUL characters (U+0000) are not accepted in the URL", start)
        if _CONTROL.search(path) is not None:
            # no resource has one; and a route's regex ends in ``$``, which matches before a trailing newline:
            # ``POST /v1/runs%0A`` created a run, ``PUT /v1/policy%0A`` replaced the policy
            return await self._refuse(scope, receive, send, "input.invalid",
                                      "control characters are not accepted in the URL path", start)
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await self._refuse(scope, receive, send, "input.invalid", "bad Content-Length", start)
            if int(length) > self.max_body:
                return await self._refuse(scope, receive, send, "input.too_large",
                                          f"request bodies are at most {self.max_body} bytes", start)
        elif method in ("POST", "PUT", "PATCH") and headers.get(b"transfer-encoding"):
            body, more = bytearray(), True
            while more:
                msg = await receive()
                if msg["type"] != "http.request":  # the client went away
                    return
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(body) > self.max_body:
                    return await self._refuse(scope, receive, send, "input.too_large",
                                              f"request bodies are at most {self.max_body} bytes", start)
            receive = _replay(bytes(body), receive)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._observe(method, message["status"], start)
            await send(message)

        await self.app(scope, receive, counting_send)

    async def _refuse(self, scope: Scope, receive: Any, send: Any, code: str, detail: str, start: float) -> None:
        response = problem(code, detail, scope.get("path"))
        self._observe(scope["method"], response.status_code, start)
        await response(scope, receive, send)

    def _observe(self, method: str, status: int, start: float) -> None:
        method = method if method in _METHODS else "OTHER"
        self.metrics.requests.labels(method, str(status)).inc()
        self.metrics.latency.labels(method).observe(time.perf_counter() - start)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands the app the body already read, then the client's later messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
