"""A small TCP fault proxy: forwards to a real server until the test cuts it.

``cut("reset")`` drops every connection and refuses new ones (Redis or
PostgreSQL stopped); ``cut("blackhole")`` keeps sockets open but forwards
nothing (a partition: only timeouts notice). ``restore()`` heals it.
Bounded: at most ``max_connections`` at once, 64 KiB reads with back-pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

__all__ = ["TcpProxy"]

Mode = Literal["open", "reset", "blackhole"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, max_connections: int = 64) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "open"
        self._slots = asyncio.Semaphore(max_connections)
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self.accepted = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def cut(self, mode: Mode = "reset") -> None:
        self.mode = mode
        if mode == "reset":
            for client_w, server_w in list(self._conns):
                client_w.transport.abort()
                server_w.transport.abort()
            self._conns.clear()

    def restore(self) -> None:
        self.mode = "open"

    async def close(self) -> None:
        self.cut("reset")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "reset" or self._slots.locked():
            client_w.transport.abort()
            return
        async with self._slots:
            try:
                server_r, server_w = await asyncio.open_connection(*self.target)
            except OSError:
                client_w.transport.abort()
                return
            pair = (client_w, server_w)
            self._conns.add(pair)
            try:
                await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
            finally:
                self._conns.discard(pair)
                client_w.transport.abort()
                server_w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.mode != "open":
                    continue  # blackhole: swallow everything
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
