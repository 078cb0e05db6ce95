"""Socket.IO streaming: the same run events as SSE, for browser clients that prefer it.

Connect with ``auth={"token": "<api key>"}``; emit ``subscribe`` with
``{"run_id": ..., "after": N}``; receive ``run_event`` messages (the SSE
``data`` objects, in seq order, replay first, then the live tail) and a final
``run_end`` ``{"run_id", "seq"}`` after the terminal event (at once, when
``after`` is already at or past the end of a run that has ended). Subscribing
again to a run replaces that subscription (events carry no subscription id, so
two would deliver every event twice); ``unsubscribe`` ``{"run_id"}`` ends one. Each event is handled
in its own task, yet the last one the client sent about a run decides: a subscribe overtaken, while it
looked the run up, by a later subscribe or unsubscribe of that run starts nothing (its ack is still ok).
Every event is answered in its ack: ``{"ok": true}`` or ``{"ok": false,
"code": ..., "message": ...}``. The key is checked again on every
``subscribe``, and on a clock while connected (``deps.key_recheck``): once it
is revoked (or cannot be looked up), within ``deps.KEY_RECHECK_S``, the
connection's subscriptions stop, the
client gets an ``error`` event ``{"code": "auth.invalid", "message",
"retryable"}`` (the code of the failure, if the lookup failed) and is
disconnected. Events already delivered stay delivered.

A client that reads slowly (or never) is not sent more than ``QUEUE_MAX`` events ahead: python-socketio
queues every emit for its connection without bound (FACTS.md: no backpressure), so a subscription
waits until the client has taken what was queued; replay reads the store in fitted pages (app/_pages.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio

from app import deps
from app._pages import stored
from app.deps import MAX_ID
from app.stream_slots import StreamSlots
from supervisor.errors import StockadeError
from supervisor.stores.records import TERMINAL_STATUSES, Event
from supervisor.tenancy import Principal, authenticate, key_failure, key_is_live

__all__ = ["mount_socketio"]

log = logging.getLogger("stockade.socketio")

TERMINAL = frozenset({"run.completed", "run.failed", "run.canceled", "run.timed_out"})
MAX_SUBSCRIPTIONS = 64  # live ones per connection: each is a task tailing a run
QUEUE_MAX = 64  # events queued for a connection before its subscriptions wait for the client to take them
IDLE_S = 15.0  # a quiet tail checks this often whether its run ended without it (a cursor past the end)
BUS_RETRY_S = 1.0


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def _same(e: Event) -> Event:
    return e


def _size(e: Event) -> int:
    return len(_ENCODER.encode(e.data))


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message}


def _run_id_of(args: tuple[Any, ...]) -> str | None:
    data = args[0] if len(args) == 1 else None  # `emit("subscribe")` with no payload, or several, is bad input too
    run_id = data.get("run_id") if isinstance(data, dict) else None
    # run ids are printable ASCII; a lone surrogate could not even be sent to a store (no ack at all)
    if not isinstance(run_id, str) or not 0 < len(run_id) <= 64 or not (run_id.isascii() and run_id.isprintable()):
        return None
    return run_id


def mount_socketio(app: Any, rt: Any) -> Any:
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=rt.settings.cors_origins or [])
    subs: dict[str, dict[str, asyncio.Task]] = {}  # sid -> run id -> the task forwarding it
    watchers: dict[str, asyncio.Task] = {}  # sid -> the task re-checking its key
    # sid -> run id -> the newest subscribe of it still looking the run up; a later subscribe or unsubscribe
    # of the run replaces or drops it (held only while lookups are in flight: bounded by them)
    pending: dict[str, dict[str, object]] = {}
    # connections per tenant on this process (app/stream_slots.py counts them as it counts streams)
    connections = rt.socketio_slots = StreamSlots(rt.settings.max_socketio_connections_per_tenant)
    tenant_of: dict[str, str] = {}  # sid -> its tenant, for the connections it holds

    def from_client(sid: str) -> bool:
        # python-socketio hands a client's *event* named "connect" or "disconnect" to these handlers too;
        # the real ones run while the sid is still pending (connecting / disconnecting), never connected
        return sio.manager.is_connected(sid, "/")

    @sio.event
    async def connect(sid: str, environ: dict, auth: Any = None) -> Any:
        if from_client(sid):  # would reset the subscriptions' bookkeeping: tasks leaked, the cap lifted
            return _error("input.invalid", "connect is not an event")
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            p = await authenticate(rt.services, f"Bearer {token}" if isinstance(token, str) and token else None)
        except StockadeError:
            raise socketio.exceptions.ConnectionRefusedError("auth.invalid") from None
        if not connections.take(p.tenant_id):  # refused like a bad key: the client's connect_error names it
            raise socketio.exceptions.ConnectionRefusedError("rate.limited")
        try:
            await sio.save_session(sid, {"principal": p})
        except KeyError:  # the client left while its key was looked up: no disconnect will follow, register nothing
            connections.give_back(p.tenant_id)
            return False
        tenant_of[sid] = p.tenant_id
        subs[sid] = {}
        watchers[sid] = asyncio.create_task(_watch_key(sio, rt, sid, p, subs, watchers))
        return True

    @sio.event
    async def disconnect(sid: str, *args: Any) -> Any:
        if from_client(sid):
            return _error("input.invalid", "disconnect is not an event: close the connection")
        for t in subs.pop(sid, {}).values():
            t.cancel()
        pending.pop(sid, None)
        tenant = tenant_of.pop(sid, None)
        if tenant is not None:
            connections.give_back(tenant)
        watcher = watchers.pop(sid, None)
        if watcher is not None and watcher is not asyncio.current_task():  # never the watcher disconnecting it
            watcher.cancel()
        return None

    @sio.event
    async def subscribe(sid: str, *args: Any) -> dict[str, Any]:
        run_id = _run_id_of(args)
        if run_id is None:
            return _error("input.invalid", "send {run_id, after?}")
        after = args[0].get("after", 0)
        if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= MAX_ID:
            return _error("input.invalid", "after must be a sequence number (0 or more)")
        ticket = object()  # taken before the first await: handlers start in the order the client sent them
        pending.setdefault(sid, {})[run_id] = ticket
        try:
            return await _subscribe(sid, run_id, after, ticket)
        finally:
            mine = pending.get(sid)
            if mine is not None and mine.get(run_id) is ticket:
                del mine[run_id]
                if not mine:
                    pending.pop(sid, None)

    async def _subscribe(sid: str, run_id: str, after: int, ticket: object) -> dict[str, Any]:
        p: Principal = (await sio.get_session(sid))["principal"]
        try:
            if not await key_is_live(rt.services, p):
                return _error("auth.invalid", "the API key is unknown or revoked")
            run = await rt.services.runs.get_run(p.tenant_id, run_id)
        except StockadeError as exc:
            return _error(exc.code, exc.public_detail)
        except Exception:
            log.exception("subscribe of %r failed", run_id)
            return _error("internal", "internal error")
        if run is None or not p.sees(run.user_id, run.project_id):  # a bound key's: its binding's runs only
            return _error("not_found", "no such run")
        # from here on no await: the cap check and the insert cannot interleave with another subscribe
        live = subs.get(sid)
        if live is None:  # the client went away while we looked the run up
            return _error("input.invalid", "not connected")
        if pending.get(sid, {}).get(run_id) is not ticket:  # a later subscribe or unsubscribe of it decides
            return {"ok": True}
        old = live.pop(run.id, None)
        if old is not None:
            old.cancel()
        if len(live) >= MAX_SUBSCRIPTIONS:
            return _error("input.too_large", f"at most {MAX_SUBSCRIPTIONS} live subscriptions per connection")
        if not rt.stream_slots.take(run.tenant_id, replacing=old is not None):  # app/stream_slots.py: SSE too
            return _error("rate.limited", f"at most {rt.stream_slots.limit} open streams per tenant")
        task = asyncio.create_task(_forward(sio, rt, sid, run.tenant_id, run.id, after))
        live[run.id] = task

        def done(t: asyncio.Task) -> None:
            rt.stream_slots.give_back(run.tenant_id)
            if live.get(run.id) is t:
                live.pop(run.id)

        task.add_done_callback(done)
        return {"ok": True}

    @sio.event
    async def unsubscribe(sid: str, *args: Any) -> dict[str, Any]:
        run_id = _run_id_of(args)
        if run_id is None:
            return _error("input.invalid", "send {run_id}")
        pending.get(sid, {}).pop(run_id, None)  # a subscribe sent before this one, still looking up, starts nothing
        task = subs.get(sid, {}).pop(run_id, None)
        if task is not None:
            task.cancel()
        return {"ok": True}  # never subscribed (or already ended): nothing to do, and nothing revealed

    @sio.on("*")
    async def other(event: str, sid: str, *args: Any) -> dict[str, Any]:
        return _error("input.invalid", "unknown event: use subscribe or unsubscribe")

    return socketio.ASGIApp(sio, other_asgi_app=app)


async def _watch_key(sio: Any, rt: Any, sid: str, p: Principal, subs: dict[str, dict[str, asyncio.Task]],
                     watchers: dict[str, asyncio.Task]) -> None:
    """Check the connection's key on a clock (deps.key_recheck); once it fails, stop everything and disconnect."""
    while True:
        every, max_age = deps.key_recheck()
        await asyncio.sleep(every)
        if sid not in subs:  # disconnected (the handler cancels this task too; belt and braces)
            return
        try:
            err = await key_failure(rt.services, p, max_age=max_age)
        except Exception:
            log.exception("re-checking the key of %s failed", sid)
            err = StockadeError("internal", "internal error")
        if err is not None:
            break
    if watchers.get(sid) is asyncio.current_task():
        del watchers[sid]
    tasks = list(subs.pop(sid, {}).values())  # a subscribe racing this finds the connection gone
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # nothing more is forwarded after the error
    try:
        await sio.emit("error", err.to_dict(), to=sid)
        await sio.disconnect(sid)
    except Exception:
        log.exception("disconnecting %s after its key failed", sid)


async def _forward(sio: Any, rt: Any, sid: str, tenant_id: str, run_id: str, cursor: int) -> None:
    runs = rt.services.runs
    try:
        last: Event | None = None
        async for batch in _batches(runs, rt.services.events, tenant_id, run_id, cursor):
            for last in batch:
                await _taken(sio, sid)
                await sio.emit("run_event", last.to_wire(), to=sid)
        if last is None or last.type not in TERMINAL:  # the cursor was already at or past the end
            run = await runs.get_run(tenant_id, run_id)
            seq = run.last_seq if run is not None else cursor
        else:
            seq = last.seq
        await sio.emit("run_end", {"run_id": run_id, "seq": seq}, to=sid)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("forwarding run %s to %s failed", run_id, sid)


async def _taken(sio: Any, sid: str) -> None:
    """Wait while the connection has QUEUE_MAX packets or more that its client has not taken yet."""
    eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
    queue = getattr(sio.eio.sockets.get(eio_sid), "queue", None) if eio_sid is not None else None
    if queue is not None and queue.qsize() >= QUEUE_MAX:
        await queue.join()  # Engine.IO's writer marks each packet done as it takes it to send


async def _batches(runs: Any, bus: Any, tenant_id: str, run_id: str, cursor: int) -> AsyncIterator[list[Event]]:
    """The run's events after ``cursor``, each once and in seq order, through the terminal one.

    Replay from the store, then the live tail (gaps filled from the store). Ends without a terminal
    event only when the cursor is already at or past the end of a run that has ended. If the bus
    fails, it falls back to the store and tails again.
    """
    while True:
        async with contextlib.aclosing(stored(runs, tenant_id, run_id, cursor, _same, _size)) as replay:
            async for e, _ in replay:
                yield [e]
                cursor = e.seq
                if e.type in TERMINAL:
                    return
        if await _ended(runs, tenant_id, run_id):  # anything it wrote is in the store: the replay above
            if not await runs.events_after(tenant_id, run_id, cursor, limit=1):
                return
            continue
        try:
            async with contextlib.aclosing(_tail(bus, run_id, cursor)) as tail:
                async for batch in tail:
                    if not batch:  # idle: a run ended behind the client's cursor is never published again
                        if await _ended(runs, tenant_id, run_id):
                            break
                        continue
                    out: list[Event] = []
                    for e in batch:
                        if e.seq <= cursor:
                            continue
                        if e.seq != cursor + 1:  # the bus skipped some: fill from the durable log
                            missed = stored(runs, tenant_id, run_id, cursor, _same, _size, e.seq - cursor - 1)
                            async with contextlib.aclosing(missed) as gap:
                                async for g, _ in gap:
                                    out.append(g)
                                    if len(out) >= QUEUE_MAX:
                                        yield out
                                        out = []
                        out.append(e)
                        cursor = e.seq
                        if e.type in TERMINAL:
                            yield out
                            return
                    if out:
                        yield out
                else:  # the bus closed quietly (shutting down): go back to the store
                    await asyncio.sleep(BUS_RETRY_S)
        except StockadeError:  # the bus is down: the store has every event
            await asyncio.sleep(BUS_RETRY_S)


async def _ended(runs: Any, tenant_id: str, run_id: str) -> bool:
    run = await runs.get_run(tenant_id, run_id)
    return run is None or run.status in TERMINAL_STATUSES


def _tail(bus: Any, run_id: str, after: int) -> AsyncIterator[list[Event]]:
    batches = getattr(bus, "tail_batches", None)
    if batches is not None:
        return batches(run_id, after, IDLE_S)
    return _single(bus, run_id, after)


async def _single(bus: Any, run_id: str, after: int) -> AsyncIterator[list[Event]]:
    async for e in bus.tail(run_id, after):
        yield [e]
