"""``Accept`` negotiation for the one route that serves a single media type (the SSE stream).

RFC 9110 12.5.1: a request without ``Accept`` (or with an empty one) takes anything. Otherwise the most
specific media range that matches the type decides (``text/event-stream`` over ``text/*`` over ``*/*``),
and its ``q`` must be above 0. Media type parameters of a range are not compared (a client asking for
``text/event-stream;charset=utf-8`` gets the stream, which is UTF-8). A range that does not parse (no
``/``, a ``q`` that is no qvalue) is ignored, as servers do; a header of which nothing parses is as good
as none.
"""

from __future__ import annotations

__all__ = ["acceptable"]

_MAX_RANGES = 64  # a header of thousands of ranges is read no further than this


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
    for part in header.split(",")[:_MAX_RANGES]:
        rng, *params = (p.strip(" \t") for p in part.split(";"))
        typ, slash, sub = rng.lower().partition("/")
        if not slash or not typ or not sub or (typ == "*" and sub != "*"):
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
