"""``ctx``: the bundle's view of its run. Every door out is ``ctx.call``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from .connection import Connection
from .helpers import Http, Kb, Llm, Storage

__all__ = ["EVENT_TYPES", "Context", "ToolError"]

# What a bundle may put on its run's stream (run.*, tool.*, approval.*, usage come from the supervisor only,
# which refuses the rest too - with an error frame a fire-and-forget emit never waits for)
EVENT_TYPES = frozenset({"message.delta", "status", "followups", "citation", "custom"})


class ToolError(Exception):
    """A governed call was refused or failed. ``code`` is stable (``policy.denied``, ``budget.exceeded`` ...)."""

    def __init__(self, code: str, message: str = "", retryable: bool = False, **extra: Any) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.extra = extra


class Context:
    def __init__(self, conn: Connection, welcome: dict[str, Any]) -> None:
        self._conn = conn
        self.run_id: str = welcome["run_id"]
        self.bundle: str = welcome["bundle"]
        self.input: str = welcome.get("input", "")
        self.history: list[dict[str, str]] = list(welcome.get("history") or [])
        self.conversation_id: str | None = welcome.get("conversation_id")
        self.llm = Llm(self)
        self.http = Http(self)
        self.kb = Kb(self)
        self.storage = Storage(self)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("run_id", "bundle") and name in self.__dict__:
            raise AttributeError(f"ctx.{name} is read-only")
        super().__setattr__(name, value)

    # --- events
    async def emit(self, type: str, **data: Any) -> None:
        if not isinstance(type, str) or type not in EVENT_TYPES:
            raise ToolError("input.invalid", f"ctx.emit: the event type must be one of {sorted(EVENT_TYPES)}")
        if type == "message.delta" and (data.get("channel") not in ("answer", "thinking")
                                        or not isinstance(data.get("text"), str)):
            raise ToolError("input.invalid", "ctx.emit: message.delta needs channel answer|thinking and a str text")
        await self._conn.notify({"type": "emit", "event": type, "data": data})

    async def answer(self, text: str) -> None:
        await self.emit("message.delta", channel="answer", text=str(text))

    async def thinking(self, text: str) -> None:
        await self.emit("message.delta", channel="thinking", text=str(text))

    async def status(self, text: str) -> None:
        await self.emit("status", text=str(text))

    async def followups(self, items: list[str]) -> None:
        await self.emit("followups", items=[str(i) for i in items])

    async def citation(self, doc_id: str, title: str = "", source: str = "", snippet: str = "") -> None:
        await self.emit("citation", doc_id=doc_id, title=title, source=source, snippet=snippet)

    # --- governed calls
    async def call(self, tool: str, /, idempotency_key: str | None = None, **args: Any) -> Any:
        reply = await self._conn.request(self._frame(tool, idempotency_key, args, stream=False))
        return self._unwrap(reply)

    async def call_meta(self, tool: str, /, idempotency_key: str | None = None, **args: Any) -> dict[str, Any]:
        """Like ``call``, with what the supervisor knows about it: ``{"result": ..., "deduped": bool}``
        (``deduped``: an earlier call with the same idempotency key ran; this is its result, nothing re-ran)."""
        reply = await self._conn.request(self._frame(tool, idempotency_key, args, stream=False))
        return {"result": self._unwrap(reply), "deduped": bool(reply.get("deduped"))}

    async def stream(self, tool: str, /, idempotency_key: str | None = None, **args: Any) -> AsyncIterator[dict[str, Any]]:
        """Iterate a streaming tool's chunks (e.g. llm.chat deltas); the last item is ``{"result": ...}``."""
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(self._conn.request(self._frame(tool, idempotency_key, args, stream=True), queue))
        getter: asyncio.Future | None = None
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    chunk = getter.result()
                    if chunk is not None:
                        yield chunk
                        continue
                else:
                    getter.cancel()
                while not queue.empty():
                    chunk = queue.get_nowait()
                    if chunk is not None:
                        yield chunk
                yield {"result": self._unwrap(await task)}
                return
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not task.done():
                task.cancel()

    @staticmethod
    def _frame(tool: str, key: str | None, args: dict[str, Any], stream: bool) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "call", "tool": tool, "args": args, "stream": stream}
        if key is not None:
            frame["idempotency_key"] = str(key)
        return frame

    @staticmethod
    def _unwrap(reply: dict[str, Any]) -> Any:
        if reply.get("type") == "result":
            return reply.get("result")
        err = dict(reply)
        code = err.pop("code", "internal")
        message = err.pop("message", "")
        retryable = bool(err.pop("retryable", False))
        for k in ("type", "id", "v"):
            err.pop(k, None)
        raise ToolError(code, message, retryable, **err)
