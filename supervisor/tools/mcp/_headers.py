"""Headers a tenant stores for its MCP server (usually ``Authorization``): checked once, at registration."""

from __future__ import annotations

import re
from typing import Any

from supervisor.errors import StockadeError

__all__ = ["check_headers"]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
# HTTP sends header values as ASCII: anything else cannot be sent; a tab or space is legal inside a value, not
# around it (RFC 9110 5.5: the client refuses to send one, and registering failed as tool.unavailable, retryable)
_BAD_VALUE = re.compile(r"[^\x09\x20-\x7e]|^[\x09\x20]|[\x09\x20]$")
# Set by the transport or the MCP protocol itself; a stored value would corrupt the exchange or smuggle a request.
_RESERVED = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
    "proxy-authorization", "proxy-connection", "content-type", "accept", "mcp-session-id", "mcp-protocol-version",
    "last-event-id", "cookie2",
})
MAX_HEADERS = 32
MAX_VALUE = 8192


def check_headers(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StockadeError("input.invalid", "headers must be an object of strings")
    if len(raw) > MAX_HEADERS:
        raise StockadeError("input.invalid", f"at most {MAX_HEADERS} headers")
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise StockadeError("input.invalid", f"header name {str(name)[:40]!r} is not a valid token")
        if name.lower() in _RESERVED:
            raise StockadeError("input.invalid", f"header {name!r} is set by Stockade and cannot be stored")
        if name.lower() in (n.lower() for n in out):
            raise StockadeError("input.invalid", f"header {name!r} is given twice")
        if not isinstance(value, str) or len(value) > MAX_VALUE or _BAD_VALUE.search(value):
            raise StockadeError("input.invalid", f"header {name!r} needs a single-line ASCII string value of at most {MAX_VALUE} characters, "
                                                 "without spaces or tabs around it")
        out[name] = value
    return out
