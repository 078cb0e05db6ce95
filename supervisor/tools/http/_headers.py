"""Request headers from bundle code (untrusted) and response headers handed back."""

from __future__ import annotations

import re
from collections.abc import Iterable

from supervisor.errors import StockadeError

__all__ = ["CROSS_ORIGIN_DROP", "clean_request_headers", "clean_response_headers"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
# HTTP/1.1 sends values as ASCII: CR/LF/NUL, other controls and non-ASCII (which the client library cannot
# encode) are refused; tab is legal inside, but not around, a value (RFC 9110 5.5).
_BAD_VALUE = re.compile(r"[^\x09\x20-\x7e]|^[\x09\x20]|[\x09\x20]$")
MAX_HEADERS = 64
MAX_VALUE = 8192

# Connection-scoped (RFC 9110 7.6.1) or framing headers the client library sets itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "content-length", "expect",
})
# Credentials never follow a redirect to another origin (as browsers and requests do).
CROSS_ORIGIN_DROP = frozenset({"authorization", "cookie", "proxy-authorization"})


def clean_request_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """Validated headers with hop-by-hop ones removed; ``Host`` is refused (it comes from the URL)."""
    if not headers:
        return {}
    if len(headers) > MAX_HEADERS:
        raise StockadeError("input.invalid", f"at most {MAX_HEADERS} request headers")
    listed: set[str] = set()
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise StockadeError("input.invalid", f"invalid header name {name[:40]!r}")
        if len(value) > MAX_VALUE or _BAD_VALUE.search(value):
            raise StockadeError("input.invalid", f"header {name} has an invalid or over-long value")
        if name.lower() == "host":
            raise StockadeError("input.invalid", "the Host header cannot be set: it always names the URL's host")
        if name.lower() == "connection":
            listed.update(t.strip().lower() for t in value.split(","))
    return {n: v for n, v in headers.items() if n.lower() not in HOP_BY_HOP and n.lower() not in listed}


def clean_response_headers(items: Iterable[tuple[str, str]], *, decoded: bool = True) -> dict[str, str]:
    """Lower-case names, repeated headers joined with ", "; framing headers dropped, and ``Content-Encoding``
    when the body was decoded (kept for a coding ``_decode`` leaves alone, so the body is never mislabelled)."""
    out: dict[str, str] = {}
    for name, value in items:
        n = name.lower()
        if n in HOP_BY_HOP or (n == "content-encoding" and decoded):
            continue
        out[n] = f"{out[n]}, {value}" if n in out else value
    return out
