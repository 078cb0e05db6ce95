"""A small asyncio TCP proxy in front of PostgreSQL that a test can cut.

``cut()`` drops every live connection and refuses new ones until ``restore()``.
``cut_when(direction, predicate)`` arms a cut that fires on the first chunk for
which ``predicate(chunk)`` is true: for ``"to_server"`` the chunk is *not*
forwarded (the server never sees the request); for ``"to_client"`` it is not
forwarded either, but the server has already acted (the reply is lost — the
ambiguous case). Bounded: at most ``max_conns`` connections, 64 KiB reads,
writes wait for the peer (back-pressure), everything closes with ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["FaultProxy"]

_CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5432, *, max_conns: int = 64) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.max_conns = max_conns
        self.port = 0
        self.cut_count = 0
        self.fired = asyncio.Event()  # set when an armed cut fires
        self._server: asyncio.AbstractServer | None = None
        self._down = False
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._armed: tuple[str, Callable[[bytes], bool]] | None = None

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    @property
    def is_down(self) -> bool:
        return self._down

    def cut(self) -> None:
        """Drop every connection now; refuse new ones until restore()."""
        self._down = True
        self._armed = None
        self.cut_count += 1
        for client_w, server_w in list(self._conns):
            for w in (client_w, server_w):
                w.transport.abort()  # RST-like: no graceful flush of anything still queued
        self._conns.clear()

    def restore(self) -> None:
        self._down = False

    def cut_when(self, direction: str, predicate: Callable[[bytes], bool]) -> None:
        if direction not in ("to_server", "to_client"):
            raise ValueError(direction)
        self.fired.clear()
        self._armed = (direction, predicate)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- plumbing

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._down or len(self._conns) >= self.max_conns:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        if self._down:  # cut while we were connecting
            client_w.transport.abort()
            server_w.transport.abort()
            return
        pair = (client_w, server_w)
        self._conns.add(pair)
        for src, dst, direction in ((client_r, server_w, "to_server"), (server_r, client_w, "to_client")):
            task = asyncio.ensure_future(self._pipe(src, dst, direction, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                if not data or pair not in self._conns:
                    break
                armed = self._armed
                if armed is not None and armed[0] == direction and armed[1](data):
                    self.cut()
                    self.fired.set()
                    return
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if pair in self._conns:
                self._conns.discard(pair)
                for w in pair:
                    with contextlib.suppress(Exception):
                        w.close()
