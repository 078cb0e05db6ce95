"""Run the demo broker: in the caller's event loop (tests) or as a process (``python -m deployment.demo_broker``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from deployment.demo_broker.app import build_app
from deployment.demo_broker.book import Book

__all__ = ["RunningBroker", "running_app", "running_broker"]


@dataclass(frozen=True)
class RunningBroker:
    url: str  # http://127.0.0.1:PORT, no trailing slash
    book: Book


@contextlib.asynccontextmanager
async def running_app(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn in the current event loop until the block ends; yields its base URL.
    ``port=0`` picks a free port."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # a bind error surfaces here
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()
        yield f"http://{host}:{bound[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


@contextlib.asynccontextmanager
async def running_broker(host: str = "127.0.0.1", port: int = 0, book: Book | None = None) -> AsyncIterator[RunningBroker]:
    """A demo broker in the current event loop; ``.book`` is its live state."""
    book = book if book is not None else Book()
    async with running_app(build_app(book), host, port) as url:
        yield RunningBroker(url=url, book=book)
