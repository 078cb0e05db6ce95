"""The HTTP status of an MCP server's refusals, which the SDK drops.

For a non-2xx answer without a JSON-RPC error in its body, the SDK hands the
caller "MCP error -32603: Server returned an error response" and nothing else:
a 401 from a server whose credential was revoked, or one registered without
the ``Authorization`` header it needs, read like a crash of the server. The
client's response hook notes each such status here, in a list the caller sets
(like ``supervisor.tools._capped.refusals``: the SDK posts each request in a
copy of the caller's context, so concurrent calls never mix), and
``map_error`` names it.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["HttpRefusal", "describe", "http_refusals", "note_http_refusal"]


@dataclass(frozen=True)
class HttpRefusal:
    status: int
    scheme: str | None  # the WWW-Authenticate scheme (a bare token), if the server sent a challenge


http_refusals: ContextVar[list[HttpRefusal] | None] = ContextVar("stockade_mcp_http_refusals", default=None)

# Only the scheme's token is repeated: the challenge's parameters (realm, resource_metadata URLs, error text)
# are the server's to choose and are neither followed nor shown.
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,31})(?=\s|,|$)")
_REASONS = {
    401: "the server wants credentials: the stored headers are missing, wrong or revoked",
    403: "the server refused the stored credentials",
    407: "a proxy wants credentials",
    429: "the server is rate-limiting",
}


async def note_http_refusal(response: Any) -> None:
    """httpx2 response hook: note a POST's 4xx/5xx answer for the caller (``http_refusals``)."""
    sink = http_refusals.get()
    if sink is None or response.status_code < 400 or response.request.method != "POST" or len(sink) >= 16:
        return
    m = _SCHEME.match(response.headers.get("www-authenticate", ""))
    sink.append(HttpRefusal(response.status_code, m.group(1) if m else None))


def describe(refusal: HttpRefusal) -> str:
    """``the MCP server answered HTTP 401 (WWW-Authenticate: Bearer): the server wants credentials: ...``"""
    text = f"the MCP server answered HTTP {refusal.status}"
    if refusal.scheme:
        text += f" (WWW-Authenticate: {refusal.scheme})"
    reason = _REASONS.get(refusal.status)
    return f"{text}: {reason}" if reason else text
