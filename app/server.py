"""Process entry points: all-in-one ``serve``, ``api`` replicas and ``worker`` replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvicorn

from app.main import build_asgi
from supervisor.runtime import open_runtime
from supervisor.settings import Settings

T = TypeVar("T")

__all__ = ["run", "run_server"]


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a process's main coroutine on uvloop (installed with uvicorn[standard]), else on asyncio's loop.

    ``uvicorn.run`` would pick uvloop by itself, but ``uvicorn.Server.serve`` (which we call, inside
    our own loop, next to the workers) runs on whatever loop it is given: without this the whole
    supervisor - per-run sockets, SSE, HTTP - ran on the slower default loop (FACTS.md: a Unix-socket
    round trip costs 47 us on uvloop, 121-146 us on asyncio).
    """
    try:
        import uvloop
    except ImportError:  # a platform without uvloop: asyncio's loop works, only slower
        return asyncio.run(main)
    return uvloop.run(main)


async def run_server(settings: Settings, *, api: bool, workers: bool) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rt = await open_runtime(settings)
    await rt.start(workers=workers, watch=workers)
    try:
        if api:
            app = build_asgi(rt, role_worker=workers)
            config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                    lifespan="off", timeout_graceful_shutdown=3, proxy_headers=True)
            await uvicorn.Server(config).serve()
        else:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    finally:
        await rt.stop()
