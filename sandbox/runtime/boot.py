"""In-sandbox entry point: ``python -I -S /runtime/boot.py``.

Connects to the run's socket, receives the run context in ``welcome``, imports
the bundle's entrypoint from /bundle and runs ``async def main(ctx)``; reports
the outcome in a ``done`` frame. Standard library only.
"""

import asyncio
import importlib.util
import os
import sys
import traceback

RUNTIME = os.path.dirname(os.path.abspath(__file__))
if RUNTIME not in sys.path:
    sys.path.insert(0, RUNTIME)

from stockade_sdk.connection import Connection  # noqa: E402
from stockade_sdk.context import Context  # noqa: E402

SOCKET = os.environ.get("STOCKADE_SOCKET", "/run/stockade/s")
BUNDLE = os.environ.get("STOCKADE_BUNDLE_DIR", "/bundle")


def _bundle_traceback(exc: BaseException) -> str:
    """The bundle's own frames only: the tenant may see them, runtime internals stay out."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(BUNDLE + "/")]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    return "Traceback (most recent call last):\n" + "".join(lines)


def _load_main(entrypoint: str):
    if BUNDLE not in sys.path:
        sys.path.insert(0, BUNDLE)
    path = os.path.join(BUNDLE, entrypoint)
    spec = importlib.util.spec_from_file_location("__bundle_main__", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load entrypoint {entrypoint}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["__bundle_main__"] = module
    spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if main is None or not asyncio.iscoroutinefunction(main):
        raise TypeError(f"{entrypoint} must define `async def main(ctx)`")
    return main


async def _run() -> int:
    conn = await Connection.open(SOCKET)
    welcome = await conn.handshake()
    ctx = Context(conn, welcome)
    done: dict = {"type": "done", "status": "ok"}
    try:
        main = _load_main(welcome.get("entrypoint", "main.py"))
        await main(ctx)
    except Exception as exc:  # the bundle's failure is reported, not hidden
        done = {
            "type": "done",
            "status": "error",
            "error_type": type(exc).__name__,
            "message": str(exc)[:4000],
            "traceback": _bundle_traceback(exc)[-16000:],
        }
        code = getattr(exc, "code", None)
        if isinstance(code, str):
            done["code"] = code
    try:
        await conn.notify(done)
        await conn.close()
    except (ConnectionError, OSError):
        return 3
    return 0 if done["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(_run()))
