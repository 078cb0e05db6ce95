"""How many items one upstream message may hold, counted on its JSON before an SDK validates it.

The SDKs (MCP, OpenAI, Anthropic) turn every content block, tool call or listed
tool into a model on the event loop (~10-30 us each): a 10 MB answer of 200,000
empty tool calls froze every tenant's calls for ~5 s (the LLM byte cap is
64 MB). Bytes cannot bound that (the items are tiny) and a byte scan cannot
count them (JSON escapes spell a key many ways), so a message of
``CHECKED_FROM`` bytes or more is decoded with the C JSON decoder first (~20 ms
per MB) and refused when a list in it is longer than ``MAX_ITEMS``. Smaller
messages cannot hold that many objects and are not decoded twice.

``guard_messages(roots)`` makes an httpx2 response hook. It wraps the content
decoder, so it sees decoded bytes (a gzip-encoded answer is counted too): a JSON
body when it ends, a server-sent-events stream event by event. ``roots`` picks
the parts of a message to count (MCP leaves ``structuredContent`` out: the SDK
keeps it as plain JSON, cheap at any length).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx2

from supervisor.tools._capped import ResponseTooLarge

__all__ = ["CHECKED_FROM", "MAX_ITEMS", "TooManyItems", "check_items", "guard_messages"]

MAX_ITEMS = 10_000
CHECKED_FROM = 16 * 1024  # fewer bytes hold fewer than MAX_ITEMS objects ("{}," is 3 bytes)
_LINES = re.compile(rb"\r\n|\r|\n")

Roots = Callable[[Any], Iterable[Any]]


def _whole(doc: Any) -> Iterable[Any]:
    return (doc,)


class TooManyItems(ResponseTooLarge):
    """A message with a list longer than ``MAX_ITEMS`` (never retried, like any oversized answer)."""

    def __init__(self, n: int) -> None:
        super().__init__(MAX_ITEMS, f"a message with a list of {n} items (at most {MAX_ITEMS})")


def check_items(raw: bytes, roots: Roots = _whole) -> None:
    """Raise ``TooManyItems`` if the parts ``roots`` picks of the JSON in ``raw`` hold a list longer than
    ``MAX_ITEMS``."""
    if len(raw) < CHECKED_FROM:
        return
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON: the SDK refuses it on its own
        return
    stack = list(roots(doc))
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(x for x in v.values() if isinstance(x, dict | list))
        elif isinstance(v, list):
            if len(v) > MAX_ITEMS:
                raise TooManyItems(len(v))
            stack.extend(x for x in v if isinstance(x, dict | list))


class _Events:
    """Server-sent events as they arrive: each event's data is checked when its blank line comes."""

    def __init__(self, roots: Roots) -> None:
        self._roots = roots
        self._buf = bytearray()  # an unfinished line: appended to in place (a 64 MB line is no 64 MB copy per chunk)
        self._data: list[bytes] = []

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        if not final and b"\n" not in chunk and b"\r" not in chunk[:-1]:
            self._buf += chunk  # no line ends here (a CR at the very end may be half of a CRLF)
            return
        buf = bytes(self._buf) + chunk
        if final:
            done, rest = buf, b""
        else:
            last = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
            end = max(buf.rfind(b"\n", 0, last), buf.rfind(b"\r", 0, last))
            done, rest = buf[:end + 1], buf[end + 1:]
        self._buf = bytearray(rest)
        lines = _LINES.split(done)
        if not final:
            lines.pop()  # what follows the last terminator: nothing
        for line in lines:
            if not line:
                self._dispatch()
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        if final:
            self._dispatch()

    def _dispatch(self) -> None:
        if self._data:
            data, self._data = b"\n".join(self._data), []
            check_items(data, self._roots)


class _GuardDecoder:
    def __init__(self, inner: Any, roots: Roots, sse: bool) -> None:
        self._inner = inner
        self._roots = roots
        self._events = _Events(roots) if sse else None
        self._body = bytearray()

    def _see(self, out: Any, *, final: bool = False) -> Any:
        pieces = [out] if isinstance(out, bytes | bytearray) else list(out)
        for piece in pieces:
            if self._events is not None:
                self._events.feed(bytes(piece))
            else:
                self._body += piece
        if final:
            if self._events is not None:
                self._events.feed(b"", final=True)
            else:
                check_items(bytes(self._body), self._roots)
        return out if isinstance(out, bytes | bytearray) else pieces

    def decode(self, data: bytes) -> Any:
        return self._see(self._inner.decode(data))

    def flush(self) -> Any:
        return self._see(self._inner.flush(), final=True)


def guard_messages(roots: Roots = _whole) -> Callable[[httpx2.Response], Awaitable[None]]:
    """A response hook counting what each message of an answer holds before the SDK reads it."""

    async def hook(response: httpx2.Response) -> None:
        kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        decoder = _GuardDecoder(response._get_content_decoder(), roots, kind == "text/event-stream")
        response._decoder = decoder  # type: ignore[attr-defined]

    return hook
