"""One sandbox connection: frames in, governed calls through the chain, events out.

Identity is the supervisor's binding of this socket to its run (checked against
the kernel's peer credentials before the first frame is read); nothing in a
frame can change it. A malformed, oversized or out-of-order frame gets an error
frame, an audit record and a closed connection, never a crashed supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from sandbox.runtime.stockade_sdk.context import EVENT_TYPES
from supervisor.audit.recorder import MAX_TOOL_CHARS, AuditRecorder
from supervisor.chain.base import Binding, CallState, through_cancel
from supervisor.chain.build import Chain
from supervisor.chain.lease import LEASE
from supervisor.errors import StockadeError
from supervisor.events import RunEmitter
from supervisor.tool_output import ToolOutput
from supervisor.wire import HEADER, MAX_REPLY, FrameError, decode_frame, encode

__all__ = ["BUNDLE_EVENT_TYPES", "RunSession", "SessionOutcome"]

log = logging.getLogger("stockade.session")

# What a bundle may put on its run's stream; run.* / tool.* / approval.* / usage come from the supervisor only.
BUNDLE_EVENT_TYPES = EVENT_TYPES  # what a bundle may emit: the SDK checks the same set before sending
IDENTITY_KEYS = ("tenant", "tenant_id", "run", "run_id", "user", "user_id", "project", "project_id")
MAX_IN_FLIGHT = 64


@dataclass
class SessionOutcome:
    status: str | None = None  # "ok" | "error" from the done frame
    error_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    code: str | None = None
    limit: str | None = None  # limit.output / limit.events / frame.* / store.unavailable that ended the run


class RunSession:
    def __init__(
        self, *, services: Any, chain: Chain, recorder: AuditRecorder, binding: Binding,
        emitter: RunEmitter, welcome: dict[str, Any], on_limit: Any = None,
        max_output: int | None = None, events_per_s: int | None = None, lease: Any = None,
    ) -> None:
        """``max_output`` / ``events_per_s``: this run's caps (a bundle's own limits may be lower than the
        settings'); never above the settings. ``lease``: the worker's ``RunLease`` on the run, checked by the
        chain's fence before each call's side effects (supervisor/chain/lease.py); None: no fence."""
        self.services = services
        self.chain = chain
        self.recorder = recorder
        self.binding = binding
        self.emitter = emitter
        self.welcome = welcome
        self.on_limit = on_limit  # callable(code) -> None: the worker kills the sandbox
        self.lease = lease
        s = services.settings
        self.max_frame = s.sandbox_max_frame_bytes
        self.max_output = min(s.sandbox_max_output_bytes, max_output or s.sandbox_max_output_bytes)
        self.events_per_s = min(s.sandbox_max_events_per_s, events_per_s or s.sandbox_max_events_per_s)
        self.outcome = SessionOutcome()
        self._writer: asyncio.StreamWriter | None = None
        self._write_lock = asyncio.Lock()
        self._tasks: dict[asyncio.Task, int | None] = {}  # calls in flight -> their integer request id
        self._ids: set[int] = set()  # request ids in flight: a second call with one is a protocol error
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._bucket = float(self.events_per_s)
        self._bucket_t = time.monotonic()
        self._spare: int | None = None  # a second descriptor of the connection (``_exactly``)
        self._marks: dict[str, tuple[str, int]] = {}  # CallState.run_marks: this run's side effects per resource
        self._calls: dict[int, CallState] = {}  # calls in flight by request id (a ``cancel`` frame names one)
        self.read_done = asyncio.Event()  # the sandbox's last frame was read (done frame, EOF or a bad frame)
        self.finished = asyncio.Event()  # ... and its calls still in flight then have ended

    # ------------------------------------------------------------------ framing
    async def _read_frame(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        """The next frame. ``IncompleteReadError`` only for an end of stream between two frames; one that
        cuts a frame short is a bad frame (``FrameError``: it gets its audit record like any other)."""
        try:
            head = await _exactly(reader, HEADER.size, self._spare, self.max_frame)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise FrameError("frame.invalid", f"connection closed inside a frame header "
                                 f"({len(exc.partial)} of {HEADER.size} bytes)") from None
            raise
        (size,) = HEADER.unpack(head)
        if size > self.max_frame:
            raise FrameError("frame.too_large", f"frame of {size} bytes exceeds the {self.max_frame}-byte cap")
        try:
            body = await _exactly(reader, size, self._spare, self.max_frame)
        except asyncio.IncompleteReadError as exc:
            raise FrameError("frame.invalid", f"connection closed inside a frame ({len(exc.partial)} of "
                             f"{size} bytes)") from None
        return decode_frame(body)

    async def send(self, obj: dict[str, Any]) -> None:
        """Write one frame. A sandbox that went away is not an error here (the read loop sees it): what
        the caller still has to do after replying (a call's outcome record) must not be skipped."""
        if self._writer is None or self._writer.is_closing():
            return
        data = encode(obj, max(self.max_frame, MAX_REPLY))
        async with self._write_lock:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except ConnectionError:
                pass

    # ------------------------------------------------------------------ main loop
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, greeted: bool = False) -> None:
        """``greeted``: a warm sandbox's ``hello`` was already read when its slot was prepared."""
        self._writer = writer
        self._spare = _second_descriptor(writer)
        try:
            if not greeted:
                hello = await self._read_frame(reader)
                if hello.get("type") != "hello":
                    raise FrameError("frame.invalid", "the first frame must be hello")
            await self.send({"type": "welcome", "max_frame": self.max_frame, **self.welcome})
            while True:
                frame = await self._read_frame(reader)
                if not await self._dispatch(frame):
                    break
        except FrameError as exc:
            await self._protocol_error(exc.code, exc.message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sandbox went away; the worker sees the exit
        except StockadeError as exc:  # e.g. an emit after the run ended, or the store went away mid-run
            if exc.code.endswith(".unavailable") and self.outcome.limit is None:
                self.outcome.limit = exc.code  # the run fails with it, not as a sandbox that crashed
            log.info("run %s: session ended: %s", self.binding.run_id, exc)
        except Exception:  # a frame nothing above foresaw still gets its one record, and a closed connection
            log.exception("run %s: frame handling failed", self.binding.run_id)
            await self._protocol_error("internal", "the supervisor could not handle a frame")
        finally:
            self.read_done.set()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            writer.close()
            if self._spare is not None:
                os.close(self._spare)
                self._spare = None
            self.finished.set()

    async def _dispatch(self, frame: dict[str, Any]) -> bool:
        kind = frame["type"]
        for key in IDENTITY_KEYS:
            if key in frame:
                if not await self._token():  # each refusal writes an audit record: metered like an emit
                    return False
                await self._audit_frame("frame.identity", f"frame names {key!r}; identity comes from the socket")
                await self.send({"type": "error", "id": frame.get("id"), "code": "frame.identity",
                                 "message": "frames may not name a tenant, run, user or project", "retryable": False})
                return True
        if kind == "call":
            if self.outcome.limit is not None:  # the run is ending over a limit: no call starts any more
                return False
            rid = frame.get("id")
            if type(rid) is not int and not await self._token():  # refused and audited by _call: metered
                return False
            if type(rid) is int:  # any other id is refused (and audited) by _call
                if rid in self._ids:
                    # its replies could not be told apart from the first call's, which may already have acted
                    raise FrameError("frame.invalid", f"call id {rid} is already in flight")
                self._ids.add(rid)
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._call(frame))
            self._tasks[task] = rid if type(rid) is int else None
            task.add_done_callback(self._call_done)
            return True
        if kind == "cancel":
            if not await self._token():  # metered like an emit: each is a lookup, and may write records
                return False
            self._cancel(frame.get("id"))
            return True
        if kind == "emit":
            await self._emit(frame)
            # a run over its output or events limit is ending: what it sent after is not read (no call runs)
            return self.outcome.limit is None
        if kind == "done":
            self._done(frame)
            return False
        raise FrameError("frame.invalid", f"unknown frame type {kind!r}")

    async def abort_calls(self, grace_s: float) -> None:
        """Cancel the calls still in flight and wait (bounded) until they have settled and recorded their
        outcome: the node is stopping, and its stores close next."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)

    def _cancel(self, rid: Any) -> None:
        """The bundle let go of call ``rid`` (a broken-off ``ctx.stream``, a ``wait_for`` around
        ``ctx.call``): stop it - an LLM stops generating, and charging, a wait for approval is withdrawn.
        It ends as any interrupted call does (settled, audited ``tool.canceled``, an idempotency key bound
        to the unknown outcome), with ``call.canceled``. An id not in flight (its reply crossed the cancel
        on the wire) is ignored."""
        if type(rid) is not int:
            raise FrameError("frame.invalid", "cancel needs the integer id of a call")
        call = self._calls.get(rid)
        task = next((t for t, r in self._tasks.items() if r == rid), None)
        if call is None or task is None or task.done() or call.extra.get("canceled_by"):
            return
        call.extra["canceled_by"] = "bundle"
        task.cancel()

    def _call_done(self, task: asyncio.Task) -> None:
        rid = self._tasks.pop(task)
        if rid is not None:
            self._ids.discard(rid)
        self._slots.release()

    # ------------------------------------------------------------------ calls
    async def _call(self, frame: dict[str, Any]) -> None:
        rid = frame.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            await self.send({"type": "error", "id": None, "code": "frame.invalid", "message": "call needs an integer id"})
            await self._audit_frame("frame.invalid", "call without an integer id")
            return
        key = frame.get("idempotency_key")
        call = CallState(
            binding=self.binding, tool_name=frame.get("tool"), raw_args=frame.get("args", {}), request_id=rid,
            idempotency_key=key, services=self.services,  # checked by the validate step, like the args
            emit=(out := ToolOutput(self, BUNDLE_EVENT_TYPES)),  # metered as the bundle's emits (tool_output.py)
            stream=frame.get("stream", False),  # a non-bool: refused by the validate step
            run_marks=self._marks,
        )
        if self.lease is not None:
            call.extra[LEASE] = self.lease
        # the events name the tool as the bundle spelt it, up to a point: they do not count against its output
        # limit, and a 60 KB name per call wrote MBs of events past it (an unknown tool is refused anyway)
        tool_label = call.tool_name[:MAX_TOOL_CHARS] if isinstance(call.tool_name, str) else repr(call.tool_name)[:64]
        if call.stream is True:
            async def chunk(data: dict[str, Any]) -> None:
                await self.send({"type": "chunk", "id": rid, "data": data})
            call.extra["stream_chunk"] = chunk
        # In order but not waited for here: tool.call is stored in the same group commit as the
        # call's tool.allowed record and the audit gate waits for it before the tool runs;
        # tool.result is stored behind it while the bundle already has its answer (events of
        # this run asked for later - the bundle's own, the terminal one - still come after it).
        call.announced = self.emitter.emit_nowait("tool.call", {"request_id": rid, "tool": tool_label})
        call.after_reply = []
        self._calls[rid] = call  # cancelable by the bundle while it is in the chain, not after
        try:
            try:
                result = await self.chain(call)
            finally:
                del self._calls[rid]
                if out.idle:  # most calls: their tool streamed nothing, so nothing is held
                    pass
                elif self.outcome.limit is not None:  # the run ended on a limit: what is held goes nowhere
                    out.drop()
                else:  # what its tool streamed is on the run's stream before its result
                    with contextlib.suppress(Exception):  # (a run already ended takes no more events)
                        await through_cancel(out.flush())
        except asyncio.CancelledError:
            if call.extra.get("canceled_by") != "bundle":
                raise  # the run is ending (or the node stopping): the caller's cancel
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # ours, and handled: the session goes on
            self.emitter.emit_nowait("tool.result", self._result_event(call, tool_label, code="call.canceled"))
            await self.send({"type": "error", "id": rid, "code": "call.canceled", "retryable": False,
                             "message": "the bundle canceled the call"})
            return
        except StockadeError as exc:
            self.emitter.emit_nowait("tool.result", ended := self._result_event(call, tool_label, code=exc.code))
            await self._meter_unrun(call, tool_label, ended)
            await self.send({"type": "error", "id": rid, **exc.to_dict()})
            return
        except Exception:
            log.exception("chain failed for run %s", self.binding.run_id)
            self.emitter.emit_nowait("tool.result", self._result_event(call, tool_label, code="internal"))
            await self.send({"type": "error", "id": rid, "code": "internal", "message": "internal error", "retryable": True})
            return
        self.emitter.emit_nowait("tool.result", ended := self._result_event(call, tool_label))
        await self._meter_unrun(call, tool_label, ended)
        try:
            await self.send({"type": "result", "id": rid, "result": result, "deduped": call.deduped})
        except FrameError as exc:  # a tool's result too large for a frame: the call did run, the bundle learns why
            await self.send({"type": "error", "id": rid, "code": exc.code, "message": exc.message, "retryable": False})
        finally:  # the outcome record is written even if no reply could be (sandbox gone, run ending)
            for job in call.after_reply:  # a cancel (run ended, node stopping) waits for it too
                await through_cancel(job())

    async def _meter_unrun(self, call: CallState, tool_label: str, ended: dict[str, Any]) -> None:
        """A call that ran no tool - refused (validate, policy, the rate limiter itself, the budget) or a
        replayed idempotent call - is bounded by no rate limit, yet writes an audit record and two events.
        Its reply waits for a token of the events-per-second bucket (leaving the bundle's own emits their
        half, as streamed deltas do), so a loop of them slows to that rate; and its events' bytes count
        against the output limit, past which the run ends. Not ended at the rate: being refused is no
        misuse (a gather of 1,000 calls meets the rate limiter). A call that ran its tool passed the rate
        limits and the budget. Was: a loop of unknown-tool calls wrote ~1,300 audit records and 2,600
        events a second, for as long as the run lasted."""
        if call.extra.get("tool_started"):
            return
        # a token bucket refills with time, not on an event: the wait is the time until the next token
        while (wait := self._take(self.shared_reserve())) > 0 and self.outcome.limit is None:  # noqa: ASYNC110
            await asyncio.sleep(wait)
        await self._output({"call": {"request_id": call.request_id, "tool": tool_label}, "result": ended})

    def shared_reserve(self) -> float:
        """Tokens of the events bucket that what the supervisor sends on the bundle's behalf (a tool's streamed
        deltas, refused calls) leaves to the bundle's own emits: half of it."""
        rate = float(self.events_per_s)
        return min(rate / 2, rate - 1.0)

    @staticmethod
    def _result_event(call: CallState, tool: str, code: str | None = None) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "request_id": call.request_id, "tool": tool, "verdict": call.verdict or ("deny" if code else "allow"),
            "rule_id": call.rule_id, "cost_usd": call.cost_micro / 1_000_000, "deduped": call.deduped,
            "duration_ms": round((time.monotonic() - call.started_mono) * 1000, 3),
        }
        if code:
            ev["code"] = code
        return ev

    # ------------------------------------------------------------------ emits
    async def _emit(self, frame: dict[str, Any]) -> None:
        # Every emit takes its token first, a refused one too: each refusal writes an audit record, so
        # bad emits must not be a way around the events-per-second limit (an unmetered audit flood).
        if not await self._token():
            return
        etype, data = frame.get("event"), frame.get("data")
        if not isinstance(etype, str) or etype not in BUNDLE_EVENT_TYPES or not isinstance(data, dict):
            await self._audit_frame("frame.invalid", f"bundles may not emit {str(etype)[:64]!r}")
            await self.send({"type": "error", "id": None, "code": "input.invalid",
                             "message": f"event type must be one of {sorted(BUNDLE_EVENT_TYPES)}"})
            return
        if etype == "message.delta" and (data.get("channel") not in ("answer", "thinking") or not isinstance(data.get("text"), str)):
            await self._audit_frame("frame.invalid", "message.delta needs channel answer|thinking and text")
            await self.send({"type": "error", "id": None, "code": "input.invalid", "message": "message.delta needs channel answer|thinking and text"})
            return
        if not await self._output(data):
            return
        data = {k: v for k, v in data.items() if k not in ("run_id", "seq", "type")}
        await self.emitter.emit(etype, data)

    def _refused(self) -> None:
        """A run ending over a limit (or a bad frame) takes no more output from its tools either."""
        if self.outcome.limit is not None:
            raise StockadeError(self.outcome.limit, f"the run is ending ({self.outcome.limit}): "
                                "its calls' output is no longer taken")

    async def _output(self, data: dict[str, Any]) -> bool:
        """Count ``data`` against the run's output limit; past it the run ends ``limit.output`` (False)."""
        self.emitter.bytes_emitted += len(encode({"d": data}, 1 << 30))
        if self.emitter.bytes_emitted > self.max_output:
            await self._limit("limit.output", f"emitted more than {self.max_output} bytes")
            return False
        return True

    async def _token(self) -> bool:
        """One token of the events-per-second bucket; past the limit the run ends ``limit.events`` (False)."""
        if self._take() > 0:
            await self._limit("limit.events", f"more than {self.events_per_s} events per second")
            return False
        return True

    def _take(self, reserve: float = 0.0) -> float:
        """Take one token of the bucket if ``reserve`` tokens would still be left: 0. Else the seconds until then."""
        now = time.monotonic()
        self._bucket = min(float(self.events_per_s), self._bucket + (now - self._bucket_t) * self.events_per_s)
        self._bucket_t = now
        if self._bucket < 1.0 + reserve:
            return (1.0 + reserve - self._bucket) / self.events_per_s
        self._bucket -= 1.0
        return 0.0

    def _done(self, frame: dict[str, Any]) -> None:
        o = self.outcome
        o.status = "ok" if frame.get("status") == "ok" else "error"
        for k in ("error_type", "message", "traceback", "code"):
            v = frame.get(k)
            if isinstance(v, str):
                setattr(o, k, v[:16000])

    async def _limit(self, code: str, message: str) -> None:
        if self.outcome.limit is None:
            self.outcome.limit = code
            await self._audit_frame(code, message)
            if self.on_limit is not None:
                self.on_limit(code)

    # ------------------------------------------------------------------ protocol errors
    async def _protocol_error(self, code: str, message: str) -> None:
        if self.outcome.limit is None:  # the run ends with this code (not as a crash): the connection closes now
            self.outcome.limit = code
        await self._audit_frame(code, message)
        try:
            await self.send({"type": "error", "id": None, "code": code, "message": message, "retryable": False})
        except (ConnectionError, FrameError):
            pass

    async def _audit_frame(self, kind: str, message: str) -> None:
        try:
            await self.recorder.record(self.binding.tenant_id, kind, run_id=self.binding.run_id, code=kind,
                                       detail={"message": message[:500]})
        except StockadeError:
            log.error("could not audit %s for run %s", kind, self.binding.run_id)


def _second_descriptor(writer: asyncio.StreamWriter) -> int | None:
    """A duplicate of the connection's descriptor: the socket (and what is queued on it) outlives the transport."""
    try:
        return os.dup(writer.get_extra_info("socket").fileno())
    except (AttributeError, OSError, ValueError):  # no socket (a test's writer), or out of descriptors
        return None


def _unread(fd: int | None, cap: int) -> bytes:
    """What is still queued on the socket, up to ``cap`` bytes, without waiting (the descriptor is non-blocking,
    as the transport's was: they share one open file)."""
    if fd is None:
        return b""
    chunks: list[bytes] = []
    got = 0
    while got < cap:
        try:
            chunk = os.read(fd, min(1 << 16, cap - got))
        except OSError:  # drained (EAGAIN), or the reset that follows the last byte
            break
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


async def _exactly(reader: asyncio.StreamReader, n: int, spare: int | None = None, max_frame: int = 0) -> bytes:
    """``reader.readexactly(n)``, except after a failed write of ours. A reply written to a sandbox that had
    just hung up fails (EPIPE), and the transport then closes, failing the reader too: what the sandbox sent
    before hanging up (its last emits, its done frame) was lost - the part already in the reader's buffer,
    and the part still queued on the socket that the transport had not read yet (it stops reading at once).
    A run whose bundle failed while its replies were on the way ended sandbox.crashed, its error lost.
    ``spare`` (a second descriptor of the socket) keeps that queue: it is read, then the end of the stream.
    At most two frames' worth: all a sandbox that hung up can have left there is its last burst (no more than
    its socket's send buffer), while one that only stopped reading could go on writing for ever."""
    try:
        return await reader.readexactly(n)
    except ConnectionError:
        rest = _unread(spare, 2 * (max_frame + HEADER.size))
        buffered = getattr(reader, "_buffer", None)
        if buffered is None or (not buffered and not rest):  # nothing left unread: the connection's end, as before
            raise
        if rest:
            buffered.extend(rest)  # the transport is gone: nothing else feeds this buffer any more
        reader._exception = None  # asyncio keeps the buffer; only this stands between it and us
        reader.feed_eof()
        return await reader.readexactly(n)
