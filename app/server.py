"""Process entry points: all-in-one ``serve``, ``api`` replicas and ``worker`` replicas."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
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

__all__ = ["STALL_S", "check_listen", "configure_logging", "listen_sockets", "run", "run_server", "serve"]


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


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# C0 and C1 controls (ESC, CSI, CR, NEL ...), DEL and the Unicode line separators: in a message, none
# survives as itself. A tenant's text reaches messages through what others quote back (a provider's error
# repeating the prompt, an MCP server's message, an exception's text): raw, an ESC sequence ran in the
# terminal tailing the log (cleared it, recoloured it), a CR or newline forged a line of its own.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
# Query values of these names are cut out of the access log: no route takes a credential in the query,
# but a client that puts its key there (``?api_key=``) must not have it written down; Socket.IO's ``sid``
# names an authenticated long-poll session.
_SECRET_QUERY = re.compile(r"(?i)([?&][^=&#]*(?:key|token|secret|pass|pwd|auth|credential|sig|session|sid)"
                           r"[^=&#]*=)[^&#]*")


def _escape(text: str, pattern: re.Pattern[str] = _CONTROL) -> str:
    return pattern.sub(lambda m: repr(m.group(0))[1:-1], text)  # "\x1b", "\r", "\n", "\u2028"


class OneLineFormatter(logging.Formatter):
    """Every record one line (``LOG_FORMAT``), its message with control characters escaped; a traceback
    keeps its lines, its other control characters escaped too."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _escape(super().formatException(ei), _CONTROL_BUT_NEWLINE)

    def formatStack(self, stack_info: str) -> str:
        return _escape(super().formatStack(stack_info), _CONTROL_BUT_NEWLINE)


class _AccessQueryFilter(logging.Filter):
    """uvicorn's access line (``client - "METHOD path?query HTTP/v" status``) minus credential-like query values."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (args[0], args[1], _SECRET_QUERY.sub(r"\1[redacted]", args[2]), *args[3:])
        return True


def configure_logging(level: str) -> None:
    """One format, one stream (stderr), one set of filters for every logger of the process - uvicorn's too.

    uvicorn's own logging config gave its loggers handlers of their own, past the root's: access lines
    went to stdout (block-buffered in a container: they came late, or were lost with the process) as
    "INFO:     ..." without time or logger name, and past the credential filter below. ``uvicorn.Config``
    is given ``log_config=None``: its records propagate here.
    """
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _AccessQueryFilter) for f in access.filters):
        access.addFilter(_AccessQueryFilter())
    # No MCP server credential (a URL's ?api_key=, a stored header) in any line: the HTTP client logs each
    # request's URL at INFO. Query values and those credentials are cut out, the lines kept.
    protect_logs()


async def run_server(settings: Settings, *, api: bool, workers: bool) -> None:
    configure_logging(settings.log_level)
    sockets = listen_sockets(settings.host, settings.port) if api else []
    try:
        await _run(settings, sockets, api=api, workers=workers)
    finally:
        for sock in sockets:  # uvicorn closed those it served; these are the ones it never got to
            sock.close()


async def _metrics_listener(settings: Settings, metrics: Any) -> asyncio.AbstractServer | None:
    """A worker's ``GET /metrics`` listener on ``STOCKADE_WORKER_METRICS_ADDR`` (it serves no other HTTP), or
    None when unset. (``serve`` and ``api`` show their metrics on their own ``/metrics``.)"""
    listen = settings.worker_metrics_listen
    if listen is None:
        return None
    from supervisor.metrics import serve_metrics

    try:
        return await serve_metrics(*listen, *metrics.registries(worker=True))
    except OSError as exc:  # a port in use, an address not of this host, a name that does not resolve
        raise SettingsError(f"invalid setting STOCKADE_WORKER_METRICS_ADDR: cannot listen on "
                            f"{settings.worker_metrics_addr}: {exc.strerror or exc}") from None


async def _run(settings: Settings, sockets: list[socket.socket], *, api: bool, workers: bool) -> None:
    rt = await open_runtime(settings, check_signing_key=api)  # only a node serving HTTP signs receipts
    metrics_server = None
    try:  # listening first: a worker that cannot serve its metrics claims no run
        metrics_server = None if api else await _metrics_listener(settings, rt.services.metrics)
        await rt.start(workers=workers, watch=workers, require_sandbox=workers and not api)
    except BaseException:
        if metrics_server is not None:
            metrics_server.close()
        await rt.stop()
        raise
    try:
        if api:
            app = build_asgi(rt, role_worker=workers)
            config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                    lifespan="off", timeout_graceful_shutdown=3, proxy_headers=True,
                                    log_config=None)  # its records go to the root's handler (configure_logging)
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
        if metrics_server is not None:  # scrapes end with the node; its last runs end below
            metrics_server.close()
        await rt.stop()
