"""Appending a run's events: durable in the RunStore first, then the live tail on the bus."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from supervisor.errors import log_failure
from supervisor.storable import scrub_nul
from supervisor.stores.ports import EventBus, RunStore
from supervisor.stores.records import Event

__all__ = ["RunEmitter", "TERMINAL_EVENTS", "finish_run_anywhere"]

log = logging.getLogger("stockade.events")

TERMINAL_EVENTS = {
    "succeeded": "run.completed",
    "failed": "run.failed",
    "canceled": "run.canceled",
    "timed_out": "run.timed_out",
}


class RunEmitter:
    """One per run on its worker: appends in the order they were asked for, so seq order ==
    call order == publish order.

    Order is fixed when ``emit``/``emit_nowait``/``finish`` is *called* (each takes its place
    behind the previous one synchronously), not when a task first runs. ``emit_nowait`` returns a
    future of the stored event without making the caller wait: the tool step announces
    ``tool.call`` this way, so the event is written in the same group commit as the call's
    ``tool.allowed`` audit record, and the call does not execute until it is stored (its
    publication on the bus, still in order, does not hold the call up).
    """

    def __init__(self, runs: RunStore, bus: EventBus, tenant_id: str, run_id: str) -> None:
        self._runs = runs
        self._bus = bus
        self.tenant_id = tenant_id
        self.run_id = run_id
        self._tail: asyncio.Future[None] | None = None  # resolved when the last one in line is done
        self._pending: set[asyncio.Task[Any]] = set()
        self.answer_parts: list[str] = []
        self.bytes_emitted = 0

    def _take_place(self) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]]:
        before, mine = self._tail, asyncio.get_running_loop().create_future()
        self._tail = mine
        return before, mine

    async def _in_turn(self, before: asyncio.Future[None] | None, mine: asyncio.Future[None], op: Any) -> Any:
        try:
            if before is not None and not before.done():
                await asyncio.shield(before)  # if we are canceled, the ones behind us still wait for it
            return await op()
        finally:
            mine.set_result(None)

    async def emit(self, type: str, data: dict[str, Any]) -> Event:
        before, mine = self._take_place()
        return await self._in_turn(before, mine, lambda: self._append(type, data))

    def emit_nowait(self, type: str, data: dict[str, Any]) -> asyncio.Future[Event]:
        """Append in order, in the background. The returned future holds the event as soon as it is
        STORED (or the error); publishing it on the bus follows, still in order, without holding it up."""
        before, mine = self._take_place()
        stored: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._in_turn(before, mine, lambda: self._append(type, data, stored)))
        self._pending.add(task)
        task.add_done_callback(lambda t: self._nowait_done(t, stored, mine))
        return stored

    def _nowait_done(self, task: asyncio.Task[Any], stored: asyncio.Future[Event], mine: asyncio.Future[None]) -> None:
        self._pending.discard(task)
        if not mine.done():  # canceled before it ever ran: its place must still be given up
            mine.set_result(None)
        exc = None if task.cancelled() else task.exception()
        if not stored.done():  # never stored: the waiter learns why (canceled: the run is going away)
            if exc is not None:
                stored.set_exception(exc)
                stored.exception()  # nobody may wait for it (tool.result): no "never retrieved" warning
            else:
                stored.cancel()
        if exc is not None:
            log.debug("background event append for %s failed: %s", self.run_id, exc)

    async def _append(self, type: str, data: dict[str, Any], stored: asyncio.Future[Event] | None = None) -> Event:
        data = scrub_nul(data)
        event = await self._runs.append_event(self.tenant_id, self.run_id, type, data)
        if type == "message.delta" and data.get("channel") == "answer":
            self.answer_parts.append(str(data.get("text", "")))
        if stored is not None and not stored.done():
            stored.set_result(event)
        await self._publish(event)
        return event

    async def finish(self, status: str, data: dict[str, Any], **fields: Any) -> Event | None:
        before, mine = self._take_place()  # behind every event asked for before it

        async def op() -> Event | None:
            fields.setdefault("output", "".join(self.answer_parts))
            event = await self._runs.finish_run(
                self.tenant_id, self.run_id, status, TERMINAL_EVENTS[status], scrub_nul(data), **scrub_nul(fields)
            )
            if event is not None:
                await self._publish(event)
            else:  # ended elsewhere (an API's cancel), whose terminal event went out there: nothing more here
                forget = getattr(self._bus, "forget", None)
                if forget is not None:
                    forget(self.run_id)
                if fields["output"]:  # but what it answered until then is its output (the API never knew it)
                    try:
                        await self._runs.keep_output(self.tenant_id, self.run_id, scrub_nul(fields["output"]))
                    except Exception:  # the run has ended all the same
                        log_failure(log, "could not keep the output of %s", self.run_id)
            return event

        return await self._in_turn(before, mine, op)

    async def _publish(self, event: Event) -> None:
        try:
            await self._bus.publish(event)
        except Exception:  # the durable copy is written; tailers fall back to the store
            log_failure(log, "event bus publish failed for %s seq %s", event.run_id, event.seq)


async def finish_run_anywhere(
    runs: RunStore, bus: EventBus, tenant_id: str, run_id: str, status: str, data: dict[str, Any], **fields: Any
) -> Event | None:
    """Finish a run from a process that does not host it (API cancel of a queued run, sweeps)."""
    event = await runs.finish_run(tenant_id, run_id, status, TERMINAL_EVENTS[status], scrub_nul(data),
                                  **scrub_nul(fields))
    if event is not None:
        try:
            await bus.publish(event)
        except Exception:
            log_failure(log, "event bus publish failed for %s", run_id)
    return event
