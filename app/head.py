"""HEAD is GET without the body (RFC 9110 9.3.2), on every GET resource but the event streams.

Starlette adds HEAD only to its plain routes, FastAPI to none, so load-balancer and uptime probes
(``HEAD /healthz``) and ``curl -I`` got 405. This middleware serves a HEAD as the GET of the same
resource (status, headers and Content-Length of the GET) and drops the body itself, whatever the
server does. A run's event stream is excluded: its GET does not end until the run does, and a HEAD
must answer at once, so there HEAD stays 405 (``Allow: GET``).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["HeadAsGet", "head_allowed"]


# Every path the router takes to an event stream: the route's regex ends in ``$``, which also matches before
# one trailing newline (``/events%0A`` is the stream), and a trailing slash is redirected to it.
_EVENTS = re.compile(r"/events\n?/*\Z")


def head_allowed(path: str) -> bool:
    """Whether HEAD is served as GET on ``path`` (every GET resource but an event stream)."""
    return _EVENTS.search(path) is None


class HeadAsGet:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not head_allowed(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the rest of a streamed body: nothing of it goes out
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)
