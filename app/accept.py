"""``Accept`` negotiation for the one route that serves a single media type (the SSE stream).

RFC 9110 12.5.1: a request without ``Accept`` (or with an empty one) takes anything. Otherwise the most
specific media range that matches the type decides (``text/event-stream`` over ``text/*`` over ``*/*``),
and its ``q`` must be above 0. Media type parameters of a range are not compared (a client asking for
``text/event-stream;charset=utf-8`` gets the stream, which is UTF-8). A range that does not parse (no
``/``, a type or subtype that is no token, a ``q`` that is no qvalue) is ignored, as servers do; a header
of which nothing parses is as good as none. Commas and semicolons inside a quoted parameter value
separate nothing (``text/event-stream;x="a,b";q=0`` is one range, refused).
"""

from __future__ import annotations

__all__ = ["acceptable"]

_MAX_RANGES = 64  # a header of thousands of ranges is read no further than this
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _token(text: str) -> bool:
    return bool(text) and all(c in _TCHAR for c in text)


def _split(text: str, sep: str, most: int) -> list[str]:
    """``text`` split on ``sep`` outside quoted strings (RFC 9110 5.6.4), into ``most`` parts at most."""
    if '"' not in text:
        return text.split(sep, most)[:most]
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
            if len(parts) == most:
                return parts
    parts.append(text[start:])
    return parts


def _qvalue(text: str) -> float | None:
    """RFC 9110 qvalue: 0, 1, 0.xxx or 1.000 (at most three decimals); None if it is not one."""
    head, _, tail = text.partition(".")
    if head not in ("0", "1") or len(tail) > 3 or not (tail.isascii() and (tail.isdigit() or tail == "")):
        return None
    q = float(text)
    return q if q <= 1 else None


def acceptable(header: str | None, media_type: str) -> bool:
    """Whether ``Accept: header`` admits ``media_type`` (``type/subtype``, no parameters)."""
    if header is None or not header.strip(" \t"):
        return True
    want_type, _, want_sub = media_type.lower().partition("/")
    best: tuple[int, float] | None = None  # (specificity, q) of the most specific matching range
    parsed = False
    for part in _split(header, ",", _MAX_RANGES):
        rng, *params = (p.strip(" \t") for p in _split(part, ";", _MAX_RANGES))
        typ, slash, sub = rng.lower().partition("/")
        if not slash or not _token(typ) or not _token(sub) or (typ == "*" and sub != "*"):
            continue
        q: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip(" \t").lower() == "q":
                q = _qvalue(value.strip(" \t"))
                break  # what follows q is accept-ext
        if q is None:
            continue
        parsed = True
        if typ == "*" and sub == "*":
            spec = 0
        elif typ == want_type and sub == "*":
            spec = 1
        elif typ == want_type and sub == want_sub:
            spec = 2
        else:
            continue
        if best is None or spec > best[0]:
            best = (spec, q)
        elif spec == best[0]:
            best = (spec, max(best[1], q))
    if not parsed:
        return True
    return best is not None and best[1] > 0
