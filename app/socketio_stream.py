"""Socket.IO streaming: the same run events as SSE, for browser clients that prefer it.

Connect with ``auth={"token": "<api key>"}``; emit ``subscribe`` with
``{"run_id": ..., "after": N}``; receive ``run_event`` messages (the SSE
``data`` objects, in seq order, replay first, then the live tail) and a final
``run_end`` after the terminal event. Errors come back as the ack of
``subscribe``: ``{"ok": false, "code": ..., "message": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import socketio

from app.deps import MAX_ID
from supervisor.errors import StockadeError
from supervisor.tenancy import authenticate

__all__ = ["mount_socketio"]

TERMINAL = frozenset({"run.completed", "run.failed", "run.canceled", "run.timed_out"})
MAX_SUBSCRIPTIONS = 64  # live ones per connection: each is a task tailing a run


def mount_socketio(app: Any, rt: Any) -> Any:
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=rt.settings.cors_origins or [])
    tasks: dict[str, set[asyncio.Task]] = {}

    @sio.event
    async def connect(sid: str, environ: dict, auth: Any = None) -> bool:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            p = await authenticate(rt.services, f"Bearer {token}" if token else None)
        except StockadeError:
            raise socketio.exceptions.ConnectionRefusedError("auth.invalid") from None
        await sio.save_session(sid, {"tenant_id": p.tenant_id})
        tasks[sid] = set()
        return True

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        for t in tasks.pop(sid, set()):
            t.cancel()

    @sio.event
    async def subscribe(sid: str, data: Any) -> dict[str, Any]:
        run_id = data.get("run_id") if isinstance(data, dict) else None
        if not isinstance(run_id, str) or not 0 < len(run_id) <= 64 or "\x00" in run_id:
            return {"ok": False, "code": "input.invalid", "message": "send {run_id, after?}"}
        after = data.get("after", 0)
        if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= MAX_ID:
            return {"ok": False, "code": "input.invalid", "message": "after must be a sequence number (0 or more)"}
        if len(tasks.get(sid, ())) >= MAX_SUBSCRIPTIONS:
            return {"ok": False, "code": "input.too_large",
                    "message": f"at most {MAX_SUBSCRIPTIONS} live subscriptions per connection"}
        session = await sio.get_session(sid)
        try:
            run = await rt.services.runs.get_run(session["tenant_id"], run_id)
        except StockadeError as exc:
            return {"ok": False, "code": exc.code, "message": exc.detail}
        if run is None:
            return {"ok": False, "code": "not_found", "message": "no such run"}
        task = asyncio.create_task(_forward(sio, rt, sid, run.tenant_id, run.id, after))
        tasks.setdefault(sid, set()).add(task)
        task.add_done_callback(lambda t: tasks.get(sid, set()).discard(t))
        return {"ok": True}

    return socketio.ASGIApp(sio, other_asgi_app=app)


async def _forward(sio: Any, rt: Any, sid: str, tenant_id: str, run_id: str, cursor: int) -> None:
    runs, bus = rt.services.runs, rt.services.events
    while True:  # replay
        events = await runs.events_after(tenant_id, run_id, cursor, limit=1000)
        for e in events:
            await sio.emit("run_event", e.to_wire(), to=sid)
            cursor = e.seq
            if e.type in TERMINAL:
                await sio.emit("run_end", {"run_id": run_id, "seq": e.seq}, to=sid)
                return
        if len(events) < 1000:
            break
    with contextlib.suppress(asyncio.CancelledError):
        async for e in bus.tail(run_id, cursor):
            if e.seq <= cursor:
                continue
            if e.seq != cursor + 1:
                for g in await runs.events_after(tenant_id, run_id, cursor, limit=e.seq - cursor - 1):
                    await sio.emit("run_event", g.to_wire(), to=sid)
                    cursor = g.seq
            await sio.emit("run_event", e.to_wire(), to=sid)
            cursor = e.seq
            if e.type in TERMINAL:
                await sio.emit("run_end", {"run_id": run_id, "seq": e.seq}, to=sid)
                return
