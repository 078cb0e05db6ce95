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
disconnected. Events already delivered stay delivered. A subscription the store or the bus fails
(retryable) goes on from where it was once they are back; one that fails otherwise ends with an ``error``
event ``{"code", "message", "retryable", "run_id"}`` (no disconnect) instead of run_end.

A client that reads slowly (or never) is not sent more than ``QUEUE_MAX`` events ahead: python-socketio
queues every emit for its connection without bound (FACTS.md: no backpressure), so a subscription
waits until the client has taken what was queued; replay reads the store in fitted pages (app/_pages.py).
A WebSocket send the client takes nothing of for ``SEND_TIMEOUT_S`` drops the connection. Nor are a
client's packets read while ``UNREAD_MAX`` packets (its answers, events) wait for it to take them: one that
sent events and read nothing had every answer queued; taking none for ``SEND_TIMEOUT_S`` drops it. At most
``MAX_LOOKUPS`` subscribes of a connection look their run up at once (the rest: ``rate.limited``). A
packet announcing more than ``MAX_ATTACHMENTS`` binary attachments, or that is no Socket.IO packet, drops
the connection (python-socketio kept every attachment announced, up to 10**10, in memory); so does a
payload nested too deeply to decode, or with a duplicate key in an object (``_StrictJSON``: read one way,
as REST bodies are, app/strict_json.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import engineio.json
import socketio

from app import deps, engineio_poll
from app._pages import stored
from app.deps import MAX_ID
from app.stream_slots import StreamSlots
from app.strict_json import unique_object
from supervisor.errors import StockadeError
from supervisor.stores.records import TERMINAL_STATUSES, Event
from supervisor.tenancy import Principal, authenticate, key_is_live

__all__ = ["mount_socketio"]

log = logging.getLogger("stockade.socketio")

TERMINAL = frozenset({"run.completed", "run.failed", "run.canceled", "run.timed_out"})
MAX_SUBSCRIPTIONS = 64  # live ones per connection: each is a task tailing a run
QUEUE_MAX = 64  # events queued for a connection before its subscriptions wait for the client to take them
IDLE_S = 15.0  # a quiet tail checks this often whether its run ended without it (a cursor past the end)
BUS_RETRY_S = 1.0
MAX_LOOKUPS = 2 * MAX_SUBSCRIPTIONS  # subscribes of one connection looking their run up at once
SEND_TIMEOUT_S = 60.0  # a WebSocket send its client takes nothing of for this long drops the connection
CONNECT_TIMEOUT_S = 10.0  # an Engine.IO session with no namespace connected (no key) for this long is closed
MAX_JSON_DEPTH = 32  # lists/objects a packet's JSON may nest (a subscribe is ["subscribe", {...}]: 2)
UNREAD_MAX = 4 * QUEUE_MAX  # packets waiting for a client (answers, events) before its next packet is read
_PROGRESS_S = 0.25  # how often a client held back so is looked at again (has it taken any?)
MAX_ATTACHMENTS = 1  # binary attachments a client's packet may announce (each up to Engine.IO's max payload)


_closing: set[asyncio.Task] = set()  # sessions being closed (CONNECT_TIMEOUT_S): held until done
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


class _StrictJSON:
    """The JSON codec of Engine.IO and Socket.IO packets (their ``json=`` option): as python-engineio's own,
    but a duplicate key in an object is refused, as in REST bodies (json.loads kept the last one), and a
    payload nested past the recursion limit is a ValueError (the RecursionError it raised escaped the
    handlers' drop of a bad packet: two tracebacks logged a packet, the session left open). Engine.IO tries
    every message as JSON and keeps the text when that fails with a ValueError: the Socket.IO decode then
    refuses it. (python-engineio sets it on its Packet class: for the whole process.)"""

    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(s: Any, **kwargs: Any) -> Any:
        try:
            value = engineio.json.loads(s, object_pairs_hook=unique_object, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        if _deeper_than(value, MAX_JSON_DEPTH):
            raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} deep")
        return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/objects more than ``limit`` deep (iteratively: no recursion to exhaust).

    The bound is ours, not the interpreter's: python-socketio puts binary attachments back into a payload
    recursively, and a payload ~900 deep exhausted the recursion limit on Python 3.11 but not on 3.13 (the
    same packet dropped the connection on one and was read on the other)."""
    level = [value] if isinstance(value, (list, dict)) else []
    for _ in range(limit):
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, (list, dict))]
    return bool(level)


class _Packet(socketio.packet.Packet):
    """A Socket.IO packet that announces at most MAX_ATTACHMENTS binary attachments.

    python-socketio accepts up to 9,999,999,999 and keeps every binary message that follows in memory
    until that many have come: one connection held all it cared to send (1 MB a message). The API's
    events are JSON; a binary one is answered ``input.invalid``, a larger announcement drops the connection.
    """

    def decode(self, encoded_packet: Any) -> int:
        count = super().decode(encoded_packet)
        if count > MAX_ATTACHMENTS:
            raise ValueError("too many attachments")
        return count


class _Server(socketio.AsyncServer):
    async def _handle_eio_connect(self, eio_sid: str, environ: dict) -> None:
        await super()._handle_eio_connect(eio_sid, environ)
        self.unless_connected(eio_sid)

    def unless_connected(self, eio_sid: str) -> None:
        """Close the Engine.IO session in CONNECT_TIMEOUT_S unless a namespace is connected on it by then.

        Engine.IO opens a session for anyone, the key comes with the Socket.IO CONNECT: a client that never
        sent one (or was refused, or left the namespace) kept its WebSocket, session and ping task for as
        long as it answered pings, held without a key and counted against no tenant."""

        def check() -> None:
            if eio_sid in self.eio.sockets and self.manager.sid_from_eio_sid(eio_sid, "/") is None:
                task = asyncio.ensure_future(self.drop(eio_sid))
                _closing.add(task)
                task.add_done_callback(_closing.discard)

        asyncio.get_running_loop().call_later(CONNECT_TIMEOUT_S, check)

    async def drop(self, eio_sid: str) -> None:
        """Close an Engine.IO session without waiting for its client to take the CLOSE packet (``eio.disconnect``
        waits: for ever, for a long-polling client that never polls again)."""
        sock = self.eio.sockets.get(eio_sid)
        if sock is not None:
            await sock.close(wait=False, reason=self.eio.reason.SERVER_DISCONNECT)
            self.eio.sockets.pop(eio_sid, None)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if not await self._room_for_answers(eio_sid):
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:  # not a Socket.IO packet
            # (python-socketio logged a traceback and read on: a few bytes from the client bought a traceback in
            # the log). RecursionError: an attachment put back into a payload nested ~1,000 deep
            log.info("dropping %s: %s: %s", eio_sid, type(exc).__name__, exc)
            self._binary_packet.pop(eio_sid, None)
            await self.drop(eio_sid)


    async def _room_for_answers(self, eio_sid: str) -> bool:
        """Wait, before reading a client's next packet, while ``UNREAD_MAX`` packets or more wait for it to take
        them; ``False`` (the connection dropped) when it takes none of them for ``SEND_TIMEOUT_S``.

        Every event is answered (its ack) and python-socketio queues every packet without bound: a client that
        sent events and read nothing had their answers piled up for it, ~16,000 for 50,000 six-byte events
        within seconds, without number. Engine.IO reads a connection's packets one by one in this call (its
        handlers are not run as tasks): a client that does not read is, in turn, not read."""
        queue = getattr(self.eio.sockets.get(eio_sid), "queue", None)
        if queue is None or queue.qsize() < UNREAD_MAX:
            return True
        # read on as soon as fewer than UNREAD_MAX wait (its pongs are not read meanwhile either); dropped only
        # when it took none for SEND_TIMEOUT_S - a client that reads, slowly, many streams' events is not
        loop = asyncio.get_running_loop()
        low, since = queue.qsize(), loop.time()
        while queue.qsize() >= UNREAD_MAX:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(_PROGRESS_S, SEND_TIMEOUT_S)):
                    await queue.join()  # Engine.IO's writer (or a poll) marks each packet done as it takes it
            if queue.qsize() < low:
                low, since = queue.qsize(), loop.time()
            elif loop.time() - since >= SEND_TIMEOUT_S:
                log.info("dropping %s: its client took none of %d packets for %ss", eio_sid, queue.qsize(),
                         SEND_TIMEOUT_S)
                self._binary_packet.pop(eio_sid, None)
                await self.drop(eio_sid)
                return False
        return True


class _ASGIApp(socketio.ASGIApp):
    """Engine.IO's WebSocket writer waits in each send until the transport drains, without a deadline: a
    client that reads nothing held it (and the batch of packets it had taken, and the TCP connection) for
    ever, even once dropped by the ping timeout, its tenant's connection place given back. Here a send the
    client takes nothing of for SEND_TIMEOUT_S fails, and so does every one after it: the writer ends, the
    Engine.IO handler closes the connection, and everything it held is let go. The handler's reader ends
    too: once a send has failed so, the connection reads as closed (Engine.IO read on, answering into a
    queue no writer took from, for as long as the client sent and then until its ping timeout)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            receive, send = _deadlined(receive, send)
        await super().__call__(scope, receive, send)


def _deadlined(receive: Any, send: Any) -> tuple[Any, Any]:
    stuck = False

    async def deadlined(message: Any) -> None:
        nonlocal stuck
        if stuck:
            raise OSError("the client took nothing for SEND_TIMEOUT_S")
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await send(message)
        except TimeoutError:
            stuck = True
            raise OSError("the client took nothing for SEND_TIMEOUT_S") from None

    async def received() -> Any:
        if stuck:
            return {"type": "websocket.disconnect", "code": 1006}
        return await receive()

    return received, deadlined


def mount_socketio(app: Any, rt: Any) -> Any:
    engineio_poll.install()  # a poll answers at most 16 packets (what an Engine.IO client takes)
    # cors_credentials off, as on the REST API (app/main.py): the key travels in the ``auth`` payload, never in
    # a cookie a browser would send on its own for a page of another origin
    sio = _Server(async_mode="asgi", cors_allowed_origins=rt.settings.cors_origins or [], cors_credentials=False,
                  serializer=_Packet, json=_StrictJSON)
    subs: dict[str, dict[str, asyncio.Task]] = {}  # sid -> run id -> the task forwarding it
    watchers: dict[str, asyncio.Task] = {}  # sid -> the task re-checking its key
    # sid -> run id -> the newest subscribe of it still looking the run up; a later subscribe or unsubscribe
    # of the run replaces or drops it (held only while lookups are in flight: bounded by them)
    pending: dict[str, dict[str, object]] = {}
    looking: dict[str, int] = {}  # sid -> its subscribes looking their run up now (at most MAX_LOOKUPS)
    # connections per tenant on this process (app/stream_slots.py counts them as it counts streams)
    connections = rt.socketio_slots = StreamSlots(rt.settings.max_socketio_connections_per_tenant)
    tenant_of: dict[str, str] = {}  # sid -> its tenant, for the connections it holds

    def from_client(sid: str) -> bool:
        # python-socketio hands a client's *event* named "connect" or "disconnect" to these handlers too;
        # the real ones run while the sid is still pending (connecting / disconnecting), never connected
        return sio.manager.is_connected(sid, "/")

    def refused(sid: str, code: str) -> Exception:
        eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:  # its session closes unless it connects again (CONNECT_TIMEOUT_S)
            sio.unless_connected(eio_sid)
        return socketio.exceptions.ConnectionRefusedError(code)

    @sio.event
    async def connect(sid: str, environ: dict, auth: Any = None) -> Any:
        if from_client(sid):  # would reset the subscriptions' bookkeeping: tasks leaked, the cap lifted
            return _error("input.invalid", "connect is not an event")
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            p = await authenticate(rt.services, f"Bearer {token}" if isinstance(token, str) and token else None)
        except StockadeError:
            raise refused(sid, "auth.invalid") from None
        if not connections.take(p.tenant_id):  # refused like a bad key: the client's connect_error names it
            raise refused(sid, "rate.limited")
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
        eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:  # the client left the namespace (or was made to): the session goes too unless
            sio.unless_connected(eio_sid)  # it connects again
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
        if looking.get(sid, 0) >= MAX_LOOKUPS:  # each looks the store up: not without number at once
            return _error("rate.limited", f"at most {MAX_LOOKUPS} subscribes in flight per connection")
        looking[sid] = looking.get(sid, 0) + 1
        ticket = object()  # taken before the first await: handlers start in the order the client sent them
        pending.setdefault(sid, {})[run_id] = ticket
        try:
            return await _subscribe(sid, run_id, after, ticket)
        finally:
            if looking[sid] > 1:
                looking[sid] -= 1
            else:
                del looking[sid]
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

    return _ASGIApp(sio, other_asgi_app=app)


async def _watch_key(sio: Any, rt: Any, sid: str, p: Principal, subs: dict[str, dict[str, asyncio.Task]],
                     watchers: dict[str, asyncio.Task]) -> None:
    """Check the connection's key on a clock (deps.key_recheck, deps.KeyWatch); once it fails, stop everything
    and disconnect."""
    watch = deps.KeyWatch(rt.services, p)
    while True:
        await asyncio.sleep(deps.key_recheck()[0])
        if sid not in subs:  # disconnected (the handler cancels this task too; belt and braces)
            return
        try:
            err = await watch.failure()
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
    """The run's events after ``cursor`` to the client, then run_end. The store or the bus away for a while
    (retryable): it goes on from the last event delivered once they are back (while the key watcher lets
    the connection be). Anything else ends the subscription with an ``error`` event naming the run."""
    runs = rt.services.runs
    last: Event | None = None
    while True:
        try:
            async for batch in _batches(runs, rt.services.events, tenant_id, run_id, cursor):
                for e in batch:
                    await _taken(sio, sid)
                    await sio.emit("run_event", e.to_wire(), to=sid)
                    last, cursor = e, e.seq
            if last is None or last.type not in TERMINAL:  # the cursor was already at or past the end
                run = await runs.get_run(tenant_id, run_id)
                seq = run.last_seq if run is not None else cursor
            else:
                seq = last.seq
            await sio.emit("run_end", {"run_id": run_id, "seq": seq}, to=sid)
            return
        except asyncio.CancelledError:
            raise
        except StockadeError as exc:
            if exc.retryable:  # e.g. PostgreSQL restarting between two pages of the replay
                log.warning("forwarding run %s to %s: %s; going on from %d", run_id, sid, exc.code, cursor)
                await asyncio.sleep(BUS_RETRY_S)
                continue
            err = exc
        except Exception:
            log.exception("forwarding run %s to %s failed", run_id, sid)
            err = StockadeError("internal", "internal error")
        await sio.emit("error", {**err.to_dict(), "run_id": run_id}, to=sid)
        return


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
