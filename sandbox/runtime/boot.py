"""In-sandbox entry point: ``python -I -S /runtime/boot.py``.

Connects to the run's socket, receives the run context in ``welcome``, imports
the bundle's entrypoint from /bundle and runs ``async def main(ctx)``; reports
the outcome in a ``done`` frame, then ends the process at once. Standard library only.
"""

import asyncio
import builtins
import importlib.util
import inspect  # loaded by asyncio already: no cost to the sandbox start
import os
import re
import sys
import traceback
from typing import NoReturn

RUNTIME = os.path.dirname(os.path.abspath(__file__))
if RUNTIME not in sys.path:
    sys.path.insert(0, RUNTIME)

from stockade_sdk.connection import Connection  # noqa: E402
from stockade_sdk.context import Context  # noqa: E402
from stockade_sdk.wire import FrameError  # noqa: E402

SOCKET = os.environ.get("STOCKADE_SOCKET", "/run/stockade/s")
BUNDLE = os.environ.get("STOCKADE_BUNDLE_DIR", "/bundle")
_exit = os._exit  # taken before the bundle runs, which may replace it
_BUILTINS = dict(builtins.__dict__)  # likewise: the report needs isinstance, str, len ... as they were
_update, _ANY = dict.update, BaseException  # module globals: found before the (replaceable) builtins
_CODE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*")
MESSAGE_CHARS, TRACEBACK_CHARS, NAME_CHARS, CODE_CHARS = 4000, 16000, 200, 64


def _plain(get, limit: int, default: str = "", tail: bool = False) -> str:
    """``get()`` as a plain str of at most ``limit`` characters that encodes as UTF-8, else ``default``.
    Reporting a failure reads the bundle's own objects (``__str__``, a metaclass's ``__name__``, a
    ``code`` property): any may raise anything, return a non-str, a str subclass or megabytes, or hold
    lone surrogates - none of which may cost the run its done frame."""
    try:
        value = get()
        if not isinstance(value, str):
            return default
        value = str.__getitem__(value, slice(-limit, None) if tail else slice(0, limit))  # a plain str
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    except BaseException:  # noqa: BLE001 - whatever the bundle's object raised, the report goes out
        return default


def _bundle_traceback(exc: BaseException, error_type: str, message: str) -> str:
    """The bundle's own frames only: the tenant may see them, runtime internals stay out."""
    lines = ["Traceback (most recent call last):\n"]
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(BUNDLE + "/")]
        lines += traceback.format_list(frames)
    except BaseException:  # noqa: BLE001 - a hostile __traceback__: the frames are left out
        pass
    try:
        lines += traceback.format_exception_only(type(exc), exc)
    except BaseException:  # noqa: BLE001 - hostile __notes__ / __module__: the plain line instead
        lines.append(f"{error_type}: {message}\n" if message else f"{error_type}\n")
    return "".join(lines)


def _failure(exc: BaseException) -> dict:
    if isinstance(exc, SystemExit):  # sys.exit() inside main: 0 / None is a success, as for any program
        code = _plain(lambda: repr(exc.code), 16)
        if code in ("None", "0"):
            return {"type": "done", "status": "ok"}
    cls = type(exc)
    error_type = _plain(lambda: cls.__name__, NAME_CHARS) or "Exception"
    message = _plain(lambda: str(exc), MESSAGE_CHARS, "<exception str() failed>")
    done = {
        "type": "done",
        "status": "error",
        "error_type": error_type,
        "message": message,
        "traceback": _plain(lambda: _bundle_traceback(exc, error_type, message), TRACEBACK_CHARS, tail=True),
    }
    code = _plain(lambda: getattr(exc, "code", None), CODE_CHARS + 1)
    if len(code) <= CODE_CHARS and _CODE.fullmatch(code):
        done["code"] = code
    return done


def _load_main(entrypoint: str):
    path = os.path.join(BUNDLE, entrypoint)
    # as `python app/run.py` would: the entrypoint's own folder first (its sibling modules import by
    # name), then the bundle's root (packages at the top of the bundle)
    for folder in (BUNDLE, os.path.dirname(path)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("__bundle_main__", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load entrypoint {entrypoint}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["__bundle_main__"] = module
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if main is None or not inspect.iscoroutinefunction(main):  # asyncio.iscoroutinefunction: deprecated in 3.14
        raise TypeError(f"{entrypoint} must define `async def main(ctx)`")
    return main


async def _report(conn: Connection, done: dict) -> int:
    shorter = {**done, "traceback": done.get("traceback", "")[-200:], "message": done.get("message", "")[:200]}
    shortest = {k: v for k, v in done.items() if k not in ("traceback", "message")}
    if "error_type" in shortest:
        shortest["error_type"] = shortest["error_type"][:40]
    for attempt in (done, shorter, shortest):  # the operator's frame cap may be as small as 1 KiB
        try:
            await conn.notify(attempt)
            await conn.close()
            return 0 if done["status"] == "ok" else 1
        except FrameError:  # over a (small) negotiated frame cap: once more, shorter
            continue
        except BaseException:  # noqa: BLE001 - the connection is gone (the bundle closed or clobbered it)
            return 3
    return 3


async def _run() -> NoReturn:
    """Never returns: once the outcome is reported the process ends right there (``_end``)."""
    conn = await Connection.open(SOCKET)
    welcome = await conn.handshake()
    ctx = Context(conn, welcome)
    done: dict = {"type": "done", "status": "ok"}
    try:
        main = _load_main(welcome.get("entrypoint", "main.py"))
        await main(ctx)
    except _ANY as exc:  # SystemExit, KeyboardInterrupt, CancelledError too: reported, not hidden
        _restore_builtins()
        done = _failure(exc)
    _restore_builtins()
    _end(await _report(conn, done))


def _restore_builtins() -> None:
    """Put back every builtin the bundle replaced or deleted (what it added stays: harmless)."""
    try:
        _update(builtins.__dict__, _BUILTINS)
    except _ANY:  # the report is tried either way
        pass


def _end(code: int) -> NoReturn:
    """End now: left-over threads, executor jobs and tasks that ignore cancellation would otherwise keep
    the process (and the run) alive after its outcome was delivered, until the run's time limit."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    _exit(code)


if __name__ == "__main__":
    asyncio.run(_run())
