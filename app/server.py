"""Process entry points: all-in-one ``serve``, ``api`` replicas and ``worker`` replicas."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvicorn

from app.main import build_asgi
from supervisor.runtime import open_runtime
from supervisor.settings import Settings, SettingsError

T = TypeVar("T")

__all__ = ["check_listen", "run", "run_server"]


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


def check_listen(host: str, port: int) -> None:
    """SettingsError (one line naming the variable) unless ``host:port`` can be listened on.

    Checked before anything is opened: uvicorn found out only after the runtime and its workers had
    started, and said ``ERROR: [Errno -2] Name or service not known`` (exit 3), naming no setting.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise SettingsError(f"invalid setting STOCKADE_HOST: cannot resolve {host!r}: {reason}") from None
    bound, unavailable = 0, None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:  # e.g. ::1 of "localhost" without IPv6: asyncio skips it too
                    unavailable = exc
                    continue
                name = "STOCKADE_PORT" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else "STOCKADE_HOST"
                raise SettingsError(f"invalid setting {name}: cannot listen on {host}:{port}: "
                                    f"{exc.strerror or exc}") from None
            bound += 1
    if not bound and unavailable is not None:
        raise SettingsError(f"invalid setting STOCKADE_HOST: cannot listen on {host}:{port}: "
                            f"{unavailable.strerror or unavailable}")


async def run_server(settings: Settings, *, api: bool, workers: bool) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if api:
        check_listen(settings.host, settings.port)
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
