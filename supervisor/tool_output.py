"""What one call's tool streams onto the run for the bundle (``llm.chat``'s ``message.delta``s): metered.

``ctx.emit`` of a call. The chain's own events (``usage``, ``budget.warning``, ``approval.*``) pass as
they are (after any text still held, so the stream keeps its order). Content - the deltas of a streamed
answer - is the bundle's output by another door:

- it counts against the run's output limit, in the bundle's count, as it comes: past the limit the run
  ends ``limit.output`` as an over-limit ``ctx.answer`` ends it, and the tool gets that error, so it stops
  (an LLM stops generating; what it generated is charged);
- it takes the run's events-per-second tokens, but never ends the run for lack of one, nor waits: how
  fast, and in how many pieces, a provider streams is not the bundle's doing (a fast server sends
  thousands of deltas a second). Text that finds no token is held and merged with what follows on its
  channel, and goes out as one delta when a token is due (``call_later``), or when the call ends or emits
  anything else. So a delta takes a token only while half the bucket is left for the bundle's own emits,
  and a fast model's answer arrives as fewer, larger deltas, at its own pace. Text is never dropped or
  reordered; only where one delta ends may differ from where the provider's did.
"""

from __future__ import annotations

import asyncio
from typing import Any

from supervisor.errors import StockadeError

__all__ = ["ToolOutput"]

MERGED = "message.delta"  # what is merged: {"channel", "text"} and nothing else


class ToolOutput:
    """One call's ``ctx.emit`` (``session`` is its RunSession: ``_refused``, ``_output``, ``_take``)."""

    def __init__(self, session: Any, content_types: frozenset[str] | set[str]) -> None:
        self._s = session
        self._content = content_types
        self._held: dict[str, Any] | None = None  # a delta not on the stream yet (text merged into it)
        self._timer: asyncio.TimerHandle | None = None
        self._due: asyncio.Task[None] | None = None

    async def __call__(self, etype: str, data: dict[str, Any]) -> None:
        s = self._s
        if etype not in self._content:
            await self.flush()
            await s.emitter.emit(etype, data)
            return
        s._refused()
        if not await s._output(data):
            self.drop()
            raise StockadeError("limit.output", f"the run's output passed its limit of {s.max_output} bytes")
        held = self._held
        if (etype == MERGED and held is not None and held.get("channel") == data.get("channel")
                and set(data) <= {"channel", "text"} and isinstance(data.get("text"), str)):
            held["text"] += data["text"]
        else:
            await self.flush()
            if etype != MERGED or set(data) - {"channel", "text"}:  # not mergeable: out now, on its token if any
                s._take(self._reserve())
                await s.emitter.emit(etype, data)
                return
            self._held = dict(data)
        wait = s._take(self._reserve())
        if wait <= 0:
            await self._send()
        elif self._timer is None and self._due is None:
            self._timer = asyncio.get_running_loop().call_later(wait, self._on_time)

    @property
    def idle(self) -> bool:
        """Nothing held and no token awaited: ``flush`` would do nothing."""
        return self._held is None and self._timer is None and self._due is None

    def _reserve(self) -> float:
        return self._s.shared_reserve()  # what the bundle's own emits keep

    def _on_time(self) -> None:
        self._timer = None
        self._due = asyncio.get_running_loop().create_task(self._when_due())

    async def _when_due(self) -> None:
        try:
            if self._held is None:  # sent meanwhile, on a token a later delta found: none is taken for nothing
                return
            wait = self._s._take(self._reserve())
            if wait > 0:  # the bundle's emits took the tokens meanwhile: later
                self._timer = asyncio.get_running_loop().call_later(wait, self._on_time)
                return
            await self._send()
        finally:
            self._due = None

    async def _send(self) -> None:
        held, self._held = self._held, None  # taken before the await: what comes meanwhile is held anew, after it
        if held is not None and self._s.outcome.limit is None:  # a run ending over a limit takes nothing more
            await self._s.emitter.emit(MERGED, held)

    async def flush(self) -> None:
        """Out with what is held, now (the call ends, or emits something else): one delta past the rate at most."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self._due
        if due is not None and due is not asyncio.current_task():
            await asyncio.shield(due)  # sending what it took: in order, before the rest
        await self._send()

    def drop(self) -> None:
        """The run is over a limit: what is held goes nowhere (nothing past the limit is stored)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = None

