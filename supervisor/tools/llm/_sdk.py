"""The provider SDKs, imported off the event loop.

``import anthropic`` takes ~2 s cold (``openai`` ~1 s): imported lazily on the
event loop, the first ``llm.chat`` per provider froze every tenant's calls,
streams and health checks for that long. Each SDK is imported once, in a thread
of its own; ``await sdk(provider)`` waits for it without blocking the loop, and
concurrent first calls wait for the same import. ``warm(provider)`` starts it
early (a worker node at start-up), so the first call usually finds it done. A
process that never calls an LLM (most ``stockade`` commands) never imports one.

A dedicated thread, not the loop's default executor: it is shared by no loop
(the future is awaited from any), and other work queued there cannot delay it.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from concurrent.futures import Future
from types import ModuleType

__all__ = ["loaded", "sdk", "warm"]

_MODULES = {"openai": "openai", "anthropic": "anthropic"}  # provider -> SDK module
_lock = threading.Lock()
_imports: dict[str, Future[ModuleType]] = {}


def warm(provider: str) -> Future[ModuleType]:
    """Start importing ``provider``'s SDK in a thread (once per process); the import's future."""
    with _lock:
        fut = _imports.get(provider)
        if fut is None:
            fut = _imports[provider] = Future()
            # running: a waiter that is cancelled (its run ended) cannot cancel it for everyone after it
            fut.set_running_or_notify_cancel()
            name = _MODULES[provider]
            threading.Thread(target=_import, args=(name, fut), name=f"stockade-import-{name}", daemon=True).start()
    return fut


def _import(name: str, fut: Future[ModuleType]) -> None:
    try:
        mod = importlib.import_module(name)
    except BaseException as exc:  # handed to every caller (an SDK that is not installed: ImportError)
        fut.set_exception(exc)
        return
    _prime(mod)
    fut.set_result(mod)


def _prime(mod: ModuleType) -> None:
    """What the SDK imports lazily, imported here too: its HTTP client's transport (httpcore, h11, truststore;
    ~150 ms, at the first client) and anyio's asyncio backend (at the first request)."""
    try:
        mod.DefaultAsyncHttpxClient()  # never used: it opens nothing, so there is nothing to close
        importlib.import_module("anyio._backends._asyncio")
    except Exception:  # best effort: what fails here happens again, and is reported, at the first call
        pass


async def sdk(provider: str) -> ModuleType:
    """``provider``'s SDK module, imported in a thread if it is not yet."""
    fut = warm(provider)
    if fut.done():
        return fut.result()
    return await asyncio.wrap_future(fut)


def loaded(name: str) -> ModuleType | None:
    """The module ``name`` if it is imported (and done importing); never imports, so never waits for one."""
    mod = sys.modules.get(name)
    if mod is None or getattr(getattr(mod, "__spec__", None), "_initializing", False):
        return None  # not imported, or half-imported by some thread: its classes may not exist yet
    return mod
