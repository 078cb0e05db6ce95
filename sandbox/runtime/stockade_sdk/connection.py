"""The sandbox end of the run's socket: one connection, concurrent calls by id."""

from __future__ import annotations

import asyncio
from typing import Any

from .wire import HEADER, MAX_DEPTH, MAX_FRAME, MAX_REPLY, FrameError, decode_body, encode, nests_deeper

__all__ = ["Connection"]


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._streams: dict[int, asyncio.Queue] = {}
        self._reader_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.max_frame = MAX_FRAME
        self.closed_reason: str | None = None
        self._dead = False  # nothing reads replies any more

    @classmethod
    async def open(cls, path: str) -> Connection:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_FRAME + 16)
        return cls(reader, writer)

    async def handshake(self) -> dict[str, Any]:
        await self._send({"type": "hello"})
        welcome = await self._read()
        if welcome.get("type") != "welcome":
            raise FrameError("frame.invalid", f"expected welcome, got {welcome.get('type')!r}")
        self.max_frame = int(welcome.get("max_frame", MAX_FRAME))
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())
        return welcome

    async def _read(self) -> dict[str, Any]:
        head = await self._reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(head)
        if size > max(self.max_frame, MAX_REPLY) + 1024:
            raise FrameError("frame.too_large", "reply frame too large")
        return decode_body(await self._reader.readexactly(size))

    async def _send(self, obj: dict[str, Any]) -> None:
        data = encode(obj, self.max_frame)
        if data.count(b"[") + data.count(b"{") > MAX_DEPTH and nests_deeper(obj):
            # refused here, as the bundle's own error: the supervisor would close the connection over it
            raise FrameError("frame.invalid", f"arguments or event data nest deeper than {MAX_DEPTH} levels")
        async with self._lock:
            self._writer.write(data)
            await self._writer.drain()

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await self._read()
                rid = msg.get("id")
                kind = msg["type"]
                if kind == "chunk" and rid in self._streams:
                    self._streams[rid].put_nowait(msg.get("data"))
                    continue
                fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                elif kind == "error" and rid is None:
                    self.closed_reason = f"{msg.get('code')}: {msg.get('message')}"
        except Exception as exc:  # EOF, a reset, or a reply it cannot make sense of: nothing later is read
            self.closed_reason = self.closed_reason or f"connection closed ({type(exc).__name__})"
        finally:
            self._dead = True
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(self.closed_reason or "supervisor closed the connection"))
            self._pending.clear()
            for q in self._streams.values():
                q.put_nowait(None)

    async def request(self, obj: dict[str, Any], stream: asyncio.Queue | None = None) -> dict[str, Any]:
        if self._dead:  # its reply would never be read: the call would wait for ever
            raise ConnectionError(self.closed_reason or "supervisor closed the connection")
        self._next_id += 1
        rid = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if stream is not None:
            self._streams[rid] = stream
        try:
            await self._send({**obj, "id": rid})
            return await fut
        except asyncio.CancelledError:
            if fut.cancelled() or not fut.done():  # (a canceled task cancels the future it waited on)
                self._cancel_remote(rid)
            raise
        finally:
            self._pending.pop(rid, None)
            self._streams.pop(rid, None)

    def _cancel_remote(self, rid: int) -> None:
        """Tell the supervisor this call is no longer wanted (a broken-off ``ctx.stream``, a timeout
        around ``ctx.call``): it stops the tool - an LLM stops generating and charging. Written at once,
        without waiting: a canceled task must not block. One ``write`` is one whole frame, so it cannot
        land inside another frame; an id the supervisor never got, or already answered, is ignored."""
        if self._dead or self._writer.is_closing():
            return
        try:
            self._writer.write(encode({"type": "cancel", "id": rid}, self.max_frame))
        except (ConnectionError, OSError, RuntimeError):
            pass

    async def notify(self, obj: dict[str, Any]) -> None:
        await self._send(obj)

    async def close(self) -> None:
        """Close after everything written has reached the supervisor's socket. ``close()`` alone only
        starts the flush: a run that emitted faster than the supervisor read lost its last frames
        (``done`` included) when the process exited right after it."""
        if self._reader_task:
            self._reader_task.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass  # the supervisor hung up first: nothing more can be delivered
