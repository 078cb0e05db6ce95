"""A byte cap on what an upstream (LLM provider, MCP server) may send us in one HTTP response.

The SDKs read whole bodies (``response.json()``), whole error bodies, and whole
SSE lines into memory; a hostile or broken upstream could send gigabytes, or a
single endless line. ``cap_responses`` is an httpx2 response hook: before the
body is read it swaps in a stream that raises ``ResponseTooLarge`` once more
than the cap has arrived, counted both on the wire and after decompression
(a gzip bomb is small on the wire).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import httpx2

__all__ = ["ERROR_BODY_CAP", "ResponseTooLarge", "cap_responses", "refusals", "too_large_in"]

ERROR_BODY_CAP = 256 * 1024  # a non-2xx body is only ever read for its message


# Where an oversized answer is also noted for whoever made the request: an SDK may swallow the exception or put
# another in its place (the MCP SDK ends an SSE stream that failed with "SSE stream ended without a response",
# and a connection whose task crashed on the cap with "Connection closed"). A caller that needs the real reason
# sets a list here; SDKs run their requests in copies of the caller's context (the MCP SDK hands each message's
# context to the task that posts it), so the list is the caller's own, and concurrent calls never mix.
refusals: ContextVar[list[ResponseTooLarge] | None] = ContextVar("stockade_refusals", default=None)


class ResponseTooLarge(Exception):
    """More bytes than the cap. Deliberately not an httpx error: nothing may retry it as a transport failure."""

    def __init__(self, cap: int, message: str | None = None) -> None:
        self.cap = cap
        super().__init__(message or f"the response is larger than {cap} bytes")
        sink = refusals.get()
        if sink is not None and len(sink) < 16:
            sink.append(self)


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, cap: int) -> None:
        self._inner = inner
        self._cap = cap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._cap:
                raise ResponseTooLarge(self._cap)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedDecoder:
    def __init__(self, inner: Any, cap: int) -> None:
        self._inner = inner
        self._cap = cap
        self._seen = 0

    def _count(self, out: Any) -> Any:
        if isinstance(out, bytes | bytearray):  # httpx's decoders return bytes, httpx2's an iterable of pieces
            self._seen += len(out)
            if self._seen > self._cap:
                raise ResponseTooLarge(self._cap)
            return out
        return self._pieces(out)

    def _pieces(self, out: Any) -> Any:
        for piece in out:
            self._seen += len(piece)
            if self._seen > self._cap:
                raise ResponseTooLarge(self._cap)
            yield piece

    def decode(self, data: bytes) -> Any:
        return self._count(self._inner.decode(data))

    def flush(self) -> Any:
        return self._count(self._inner.flush())


def cap_responses(max_bytes: int, error_bytes: int = ERROR_BODY_CAP) -> Callable[[httpx2.Response], Awaitable[None]]:
    """A response hook capping 2xx bodies at ``max_bytes`` and any other body at ``error_bytes``."""

    async def hook(response: httpx2.Response) -> None:
        cap = max_bytes if 200 <= response.status_code < 300 else min(max_bytes, error_bytes)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await response.aclose()
            raise ResponseTooLarge(cap)
        response.stream = _CappedStream(response.stream, cap)
        get_decoder = getattr(response, "_get_content_decoder", None)
        if get_decoder is not None:  # count decompressed bytes too
            response._decoder = _CappedDecoder(get_decoder(), cap)  # type: ignore[attr-defined]

    return hook


def too_large_in(exc: BaseException | None) -> ResponseTooLarge | None:
    """The ``ResponseTooLarge`` behind ``exc`` (SDKs wrap or chain exceptions), if any."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ResponseTooLarge):
            return e
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        stack.extend((e.__cause__, e.__context__))
    return None
