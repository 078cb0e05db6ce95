"""Process entry points: all-in-one ``serve``, ``api`` replicas and ``worker`` replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn

from app.main import build_asgi
from supervisor.runtime import open_runtime
from supervisor.settings import Settings

__all__ = ["run_server"]


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
