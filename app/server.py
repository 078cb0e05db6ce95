"""Process entry points: all-in-one ``serve``, ``api`` replicas and ``worker`` replicas."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

import uvicorn

from app.main import build_asgi
from supervisor.runtime import open_runtime
from supervisor.settings import Settings, SettingsError
from supervisor.tools.mcp import protect_logs

T = TypeVar("T")

__all__ = ["STALL_S", "check_listen", "listen_sockets", "run", "run_server", "serve"]


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


STALL_S = 60.0  # a client that takes none of what is sent to it for this long is cut off (see listen_sockets)
BACKLOG = 2048  # uvicorn's default


def listen_sockets(host: str, port: int, *, stall_s: float = STALL_S) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, or SettingsError (one line naming the variable).

    Checked before anything is opened: uvicorn found out only after the runtime and its workers had
    started, and said ``ERROR: [Errno -2] Name or service not known`` (exit 3), naming no setting.

    Each carries ``TCP_USER_TIMEOUT`` = ``stall_s``, which every accepted connection inherits: one whose
    client has taken none of the bytes sent to it for that long (its receive window shut: a client that
    reads nothing) is reset by the kernel. No write of ours waits on such a client for ever any more:
    an SSE stream or a Socket.IO long-poll response stuck in ``drain`` (uvicorn has no write deadline),
    and the bytes and the stream place it held, are let go; the application's next send finds the
    connection gone. An idle connection (nothing unacknowledged) is not affected, nor is a slow
    reader that takes something every ``stall_s``. The sockets are made here, before uvicorn serves
    them, so no connection is ever accepted without the option.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise SettingsError(f"invalid setting STOCKADE_HOST: cannot resolve {host!r}: {reason}") from None
    socks: list[socket.socket] = []
    unavailable: OSError | None = None
    try:
        for family, kind, proto, addr in dict.fromkeys((f, k, p, a) for f, k, p, _, a in infos):  # hosts files repeat
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
                if family == socket.AF_INET6:  # one socket per family, as asyncio's create_server makes them
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(stall_s * 1000)))
                if port == 0 and socks:  # one port for every address, as when it is given
                    addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
                sock.bind(addr)
                sock.listen(BACKLOG)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRNOTAVAIL:  # e.g. ::1 of "localhost" without IPv6: asyncio skips it too
                    unavailable = exc
                    continue
                name = "STOCKADE_PORT" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else "STOCKADE_HOST"
                raise SettingsError(f"invalid setting {name}: cannot listen on {host}:{port}: "
                                    f"{exc.strerror or exc}") from None
            socks.append(sock)
        if not socks:
            reason = unavailable.strerror or unavailable if unavailable is not None else "no address"
            raise SettingsError(f"invalid setting STOCKADE_HOST: cannot listen on {host}:{port}: {reason}")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def check_listen(host: str, port: int) -> None:
    """SettingsError (one line naming the variable) unless ``host:port`` can be listened on."""
    for sock in listen_sockets(host, port):
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn's server, minus its last act on a signal: once it has shut down after a SIGTERM or SIGINT it
    raised the signal again with the handler it had found - for SIGTERM the default, which ends the process
    on the spot. ``stockade serve`` / ``api`` then never stopped the runtime (``Runtime.stop``): calls in
    flight were not settled, the warm sandboxes' folders were left behind (found by a walkthrough: the next
    start swept them as "left by a worker that died"). Here the signal has done its work when serve
    returns: the caller stops the runtime, and the process ends normally."""

    async def _serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super()._serve(sockets)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()

    on_exit: Any = None  # called on the loop when a signal starts the shutdown (open streams close cleanly)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        loop = getattr(self, "_loop", None)
        if self.on_exit is not None and loop is not None:  # (in a signal handler: only a thread-safe call)
            loop.call_soon_threadsafe(self.on_exit)


async def serve(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
    """``server`` on ``sockets`` (from ``listen_sockets``), saying where, as uvicorn says it for a host."""
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
        logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, port)
    await server.serve(sockets=sockets)


async def run_server(settings: Settings, *, api: bool, workers: bool) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # No MCP server credential (a URL's ?api_key=, a stored header) in any line: the HTTP client logs each
    # request's URL at INFO. Query values and those credentials are cut out, the lines kept.
    protect_logs()
    sockets = listen_sockets(settings.host, settings.port) if api else []
    try:
        await _run(settings, sockets, api=api, workers=workers)
    finally:
        for sock in sockets:  # uvicorn closed those it served; these are the ones it never got to
            sock.close()


async def _run(settings: Settings, sockets: list[socket.socket], *, api: bool, workers: bool) -> None:
    rt = await open_runtime(settings)
    try:
        await rt.start(workers=workers, watch=workers, require_sandbox=workers and not api)
    except BaseException:
        await rt.stop()
        raise
    try:
        if api:
            app = build_asgi(rt, role_worker=workers)
            config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                    lifespan="off", timeout_graceful_shutdown=3, proxy_headers=True)
            server = _Server(config)
            # open SSE streams end cleanly on SIGTERM (was: cancelled after the graceful 3 s, an ERROR traceback
            # each, the response cut mid-chunk); their clients resume with Last-Event-ID
            server.on_exit = rt.stream_slots.drain
            await serve(server, sockets)
        else:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    finally:
        await rt.stop()
