"""Appending a run's events: durable in the RunStore first, then the live tail on the bus."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

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
    """One per run on its worker: serialises appends so seq order == publish order."""

    def __init__(self, runs: RunStore, bus: EventBus, tenant_id: str, run_id: str) -> None:
        self._runs = runs
        self._bus = bus
        self.tenant_id = tenant_id
        self.run_id = run_id
        self._lock = asyncio.Lock()
        self.answer_parts: list[str] = []
        self.bytes_emitted = 0

    async def emit(self, type: str, data: dict[str, Any]) -> Event:
        async with self._lock:
            event = await self._runs.append_event(self.tenant_id, self.run_id, type, data)
            if type == "message.delta" and data.get("channel") == "answer":
                self.answer_parts.append(str(data.get("text", "")))
            await self._publish(event)
            return event

    async def finish(self, status: str, data: dict[str, Any], **fields: Any) -> Event | None:
        async with self._lock:
            fields.setdefault("output", "".join(self.answer_parts))
            event = await self._runs.finish_run(
                self.tenant_id, self.run_id, status, TERMINAL_EVENTS[status], data, **fields
            )
            if event is not None:
                await self._publish(event)
            return event

    async def _publish(self, event: Event) -> None:
        try:
            await self._bus.publish(event)
        except Exception:  # the durable copy is written; tailers fall back to the store
            log.warning("event bus publish failed for %s seq %s", event.run_id, event.seq, exc_info=True)


async def finish_run_anywhere(
    runs: RunStore, bus: EventBus, tenant_id: str, run_id: str, status: str, data: dict[str, Any], **fields: Any
) -> Event | None:
    """Finish a run from a process that does not host it (API cancel of a queued run, sweeps)."""
    event = await runs.finish_run(tenant_id, run_id, status, TERMINAL_EVENTS[status], data, **fields)
    if event is not None:
        try:
            await bus.publish(event)
        except Exception:
            log.warning("event bus publish failed for %s", run_id, exc_info=True)
    return event
