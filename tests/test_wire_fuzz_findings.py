"""What fuzzing the run socket found: frames a sandbox can send that broke the supervisor's promises.

Each test drives a real ``RunSession`` (the real chain, recorder, emitter and stores, on both stacks)
with the frames the fuzzer sent, fed to it as the socket would deliver them, and checks the
invariants: the session ends normally (nothing escapes ``serve``), every decision has exactly one
audit record, the tenant's audit chain verifies, and bad input changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from collections import Counter
from typing import Any

import pytest

from supervisor.audit.chain import verify_chain
from supervisor.chain.base import Binding
from supervisor.errors import StockadeError
from supervisor.events import RunEmitter
from supervisor.ids import new_id
from supervisor.policy import load_policy
from supervisor.runtime import open_runtime
from supervisor.session import RunSession
from supervisor.stores.records import Run
from supervisor.tenancy import create_tenant
from supervisor.wire import HEADER, MAX_DEPTH
from tests.e2e.harness import make_data_dir, settings_for

pytestmark = pytest.mark.timeout(60)

POLICY = """
version: 1
rules:
  - id: echo
    tool: echo
    verdict: allow
"""


def raw(obj: dict[str, Any]) -> bytes:
    """A frame as a hostile sandbox may write it: ASCII-escaped JSON, so lone surrogates get through."""
    body = json.dumps({"v": 1, **obj}, ensure_ascii=True).encode()
    return HEADER.pack(len(body)) + body


def call(rid: Any, tool: Any = "echo", args: Any = None, **more: Any) -> bytes:
    return raw({"type": "call", "id": rid, "tool": tool, "args": {"x": 1} if args is None else args, **more})


DONE = raw({"type": "done", "status": "ok"})


class Writer:
    """The socket's write side; ``fail_after`` frames, the sandbox is gone (the kernel says ECONNRESET)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.frames: list[dict[str, Any]] = []
        self.fail_after = fail_after
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.frames) >= self.fail_after:
            raise ConnectionResetError("Connection lost")
        self.frames.append(json.loads(data[HEADER.size:]))

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Stack:
    def __init__(self, rt: Any, tenant_id: str) -> None:
        self.rt = rt
        self.tid = tenant_id

    async def open(self, *frames: bytes, writer: Writer | None = None, emit: Any = None,
                   **limits: Any) -> tuple[str, RunSession, asyncio.StreamReader, Writer]:
        """A session for a new run, and a connection that sends ``hello``, then ``frames``, then closes."""
        s = self.rt.services
        run = Run(id=new_id("run_"), tenant_id=self.tid, bundle="echo", bundle_version="x", input="",
                  status="queued", created_at=time.time())
        await s.runs.create_run(run)
        await s.runs.start_run(self.tid, run.id, worker_id="fuzz", started_at=time.time())
        binding = Binding(tenant_id=self.tid, run_id=run.id, bundle="echo", bundle_version="x")
        sess = RunSession(services=s, chain=self.rt.chain, recorder=self.rt.recorder, binding=binding,
                          emitter=RunEmitter(s.runs, s.events, self.tid, run.id), welcome={"run_id": run.id},
                          on_limit=lambda code: None)
        for name, value in limits.items():  # the per-run limits the worker takes from settings
            setattr(sess, name, value)
        sess._bucket = float(sess.events_per_s)
        if emit is not None:
            sess.emitter.emit = emit  # type: ignore[method-assign]
        reader = asyncio.StreamReader()
        for f in (raw({"type": "hello"}), *frames):
            reader.feed_data(f)
        reader.feed_eof()
        return run.id, sess, reader, writer or Writer()

    async def serve(self, *frames: bytes, **kw: Any) -> tuple[str, list[dict], RunSession]:
        """Serve one such connection to its end; the run's id, what the supervisor wrote back (welcome
        excluded), the session."""
        run_id, sess, reader, w = await self.open(*frames, **kw)
        async with asyncio.timeout(30):
            await sess.serve(reader, w)  # type: ignore[arg-type]  # raises if anything escaped
        assert sess.finished.is_set() and w.closed
        assert w.frames[0]["type"] == "welcome"
        return run_id, w.frames[1:], sess

    async def audit(self, run_id: str) -> list[Any]:
        recs = await self.rt.services.audit.list(self.tid, limit=10_000)
        assert verify_chain(self.tid, recs, self.rt.sealer) is None, verify_chain(self.tid, recs, self.rt.sealer)
        return [r for r in recs if r.run_id == run_id]

    async def events(self, run_id: str) -> list[Any]:
        return await self.rt.services.runs.events_after(self.tid, run_id, 0)

    async def still_serves(self) -> None:
        run_id, out, _ = await self.serve(call(1), DONE)
        assert [(f["type"], f["id"]) for f in out] == [("result", 1)]
        assert [r.kind for r in await self.audit(run_id)] == ["tool.allowed", "tool.completed"]


@pytest.fixture(params=["embedded", "production"])
def stack_settings(request):
    """Sync on purpose: ``pg_url`` creates its database with asyncio.run."""
    if request.param == "production":
        return settings_for("production", make_data_dir(), pg_url=request.getfixturevalue("pg_url"),
                            redis_url=request.getfixturevalue("redis_url"),
                            redis_prefix=request.getfixturevalue("redis_prefix"))
    return settings_for("embedded", make_data_dir())


@pytest.fixture
async def stack(stack_settings):
    settings = stack_settings
    rt = await open_runtime(settings)
    try:
        tenant, _ = await create_tenant(rt.services, f"fuzz-{secrets.token_hex(4)}")
        await rt.services.policies.put(tenant.id, POLICY, load_policy(POLICY, source="test").version)
        yield Stack(rt, tenant.id)
    finally:
        await rt.stop()
        shutil.rmtree(settings.data_dir, ignore_errors=True)


async def test_a_tool_that_is_not_a_string_gets_its_one_record_and_the_chain_still_verifies(stack):
    """``"tool": 5`` was sealed as the integer 5 and stored as the text '5': the tenant's audit chain
    no longer verified (SQLite). ``"tool": ["echo"]`` / ``{...}`` could not be stored at all: the refusal
    had no audit record."""
    run_id, out, _ = await stack.serve(call(1, tool=5), call(2, tool=["echo"]), call(3, tool={"a": 1}),
                                       call(4, tool=None), DONE)
    assert sorted((f["id"], f["code"]) for f in out) == [(i, "input.invalid") for i in (1, 2, 3, 4)]
    recs = await stack.audit(run_id)  # verifies the chain
    assert [r.kind for r in recs] == ["tool.invalid"] * 4
    assert sorted(r.tool for r in recs) == sorted(["5", "['echo']", "{'a': 1}", "None"])
    await stack.still_serves()


@pytest.mark.parametrize("frame", [
    raw({"type": "emit", "event": "custom", "data": {"d": "\ud800"}}),
    raw({"type": "emit", "event": "message.delta", "data": {"channel": "answer", "text": "a\udc00"}}),
    raw({"type": "emit", "event": "custom", "data": {"\udfff": 1}}),
    call(1, args={"\ud800": 1}),
    call("\ud800", run_id="x"),
], ids=["emit-value", "emit-delta", "emit-key", "call-args-key", "identity-id"])
async def test_a_lone_surrogate_is_refused_at_the_door(stack, frame):
    """``"\\ud800"`` is valid JSON syntax but no Unicode character: an emit carrying one raised
    UnicodeEncodeError out of the session (no audit record, no error frame, the connection dropped);
    in a call's args it was an ``internal`` error; echoed in an error frame it crashed the session."""
    run_id, out, _ = await stack.serve(frame, DONE)
    assert [(f["type"], f["id"], f["code"]) for f in out] == [("error", None, "frame.invalid")]
    assert [r.kind for r in await stack.audit(run_id)] == ["frame.invalid"]
    assert await stack.events(run_id) == []


async def test_an_escaped_surrogate_pair_or_the_text_of_an_escape_passes(stack):
    data = {"e": "\U0001f600", "text": "\\ud800 is how JSON spells it"}  # a pair; a backslash then 'ud800'
    run_id, out, _ = await stack.serve(raw({"type": "emit", "event": "custom", "data": data}), DONE)
    assert out == []
    assert [(e.type, e.data) for e in await stack.events(run_id)] == [("custom", data)]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [200, 960])
async def test_nesting_deeper_than_the_cap_is_refused_and_shallower_passes(stack, depth):
    """An emit nested ~980 deep decoded (just under the decoder's recursion limit) and then raised
    RecursionError out of the session when it was encoded again: no record, no reply. Shallower ones
    were stored, for every later reader (SSE, API, audit) to recurse through on a deeper stack."""
    body = f'{{"v":1,"type":"emit","event":"custom","data":{{"d":{nested(depth)}}}}}'.encode()
    run_id, out, _ = await stack.serve(HEADER.pack(len(body)) + body, DONE)
    assert [(f["type"], f["code"]) for f in out] == [("error", "frame.invalid")]
    assert [r.kind for r in await stack.audit(run_id)] == ["frame.invalid"]
    assert await stack.events(run_id) == []
    ok = json.loads(nested(MAX_DEPTH - 3))  # frame > args > d > ...
    run_id, out, _ = await stack.serve(call(1, args={"d": ok}), DONE)
    assert out[0]["type"] == "result" and out[0]["result"] == {"d": ok}


async def test_a_call_whose_reply_cannot_be_sent_still_records_its_outcome(stack):
    """The sandbox went away while its call ran: sending the result raised ConnectionResetError and the
    call's outcome record (``tool.completed``) was never written - an allowed call without an outcome."""
    run_id, out, _ = await stack.serve(call(1), DONE, writer=Writer(fail_after=1))  # welcome, then ECONNRESET
    assert out == []
    assert Counter(r.kind for r in await stack.audit(run_id)) == {"tool.allowed": 1, "tool.completed": 1}


@pytest.mark.parametrize(("frame", "kind", "reply"), [
    (call(1), "tool.completed", "result"),
    (call(1, tool="nope"), "tool.invalid", None),
], ids=["outcome", "refusal"])
async def test_a_call_canceled_while_its_record_is_written_keeps_its_one_record(stack, monkeypatch, frame, kind, reply):
    """The run ends (or the node stops) and the session's calls are canceled: one whose cancel landed
    inside the write of its outcome or refusal record lost it (an allowed call without an outcome, a
    refusal without its record) - or kept it, depending on whether the store had already committed:
    unknowable, so it may not be written again either."""
    recorder = stack.rt.recorder  # the chain's audit steps write through this one
    real = recorder.record
    writing, release = asyncio.Event(), asyncio.Event()

    async def record(tenant_id: str, k: str, **kw: Any) -> Any:
        if k == kind:
            writing.set()
            await release.wait()  # the store's write in flight
        return await real(tenant_id, k, **kw)

    monkeypatch.setattr(recorder, "record", record)
    run_id, sess, reader, w = await stack.open(frame, DONE)
    serving = asyncio.ensure_future(sess.serve(reader, w))  # type: ignore[arg-type]
    async with asyncio.timeout(30):
        await writing.wait()
        await sess.abort_calls(0)  # the cancel is delivered now, inside the write
        release.set()
        await serving
    assert [f["type"] for f in w.frames[1:]] == ([reply] if reply else [])
    kinds = Counter(r.kind for r in await stack.audit(run_id))
    assert kinds == ({"tool.allowed": 1, kind: 1} if kind == "tool.completed" else {kind: 1})


async def test_a_second_call_with_an_id_still_in_flight_is_a_protocol_error(stack):
    """Both ran and both answered with the same id: the bundle could not tell which result was whose."""
    run_id, out, _ = await stack.serve(call(7, args={"a": 1}), call(7, args={"a": 2}), DONE)
    assert sorted((f["type"], f["id"]) for f in out if f["type"] == "result") == [("result", 7)]
    errors = [f for f in out if f["type"] == "error"]
    assert [(e["id"], e["code"]) for e in errors] == [(None, "frame.invalid")]
    assert Counter(r.kind for r in await stack.audit(run_id)) == {
        "frame.invalid": 1, "tool.allowed": 1, "tool.completed": 1}
    # ids may be used again once their call has finished
    run_id, out, _ = await stack.serve(call(1), DONE)
    assert [f["type"] for f in out] == ["result"]


async def test_a_malformed_message_delta_is_audited(stack):
    run_id, out, _ = await stack.serve(raw({"type": "emit", "event": "message.delta", "data": {"channel": "x"}}), DONE)
    assert [(f["type"], f["code"]) for f in out] == [("error", "input.invalid")]
    assert [r.kind for r in await stack.audit(run_id)] == ["frame.invalid"]
    assert await stack.events(run_id) == []


@pytest.mark.parametrize("version", [True, 1.0, "1"])
async def test_a_version_that_is_not_the_integer_1_is_refused(stack, version):
    run_id, out, _ = await stack.serve(raw({"type": "call", "v": version, "id": 1, "tool": "echo", "args": {}}), DONE)
    assert [(f["type"], f["id"], f["code"]) for f in out] == [("error", None, "frame.invalid")]
    assert [r.kind for r in await stack.audit(run_id)] == ["frame.invalid"]
    assert await stack.events(run_id) == []


async def test_nothing_a_sandbox_sends_after_it_hit_a_limit_is_acted_on(stack):
    """Over its events limit the run is ending (the worker kills the sandbox), yet the calls it had
    already written were still read and executed."""
    emits = [raw({"type": "emit", "event": "custom", "data": {"i": i}}) for i in range(10)]
    run_id, out, sess = await stack.serve(*emits, call(1), call(2), DONE, events_per_s=3)
    assert sess.outcome.limit == "limit.events"
    assert out == []
    assert [r.kind for r in await stack.audit(run_id)] == ["limit.events"]
    assert [e.type for e in await stack.events(run_id)] == ["custom"] * 3


async def test_a_failure_nothing_foresaw_still_gets_its_record_and_a_closed_connection(stack):
    """An exception other than the protocol's own (here an event store adapter bug) escaped ``serve``:
    no audit record, no error frame, an unhandled exception in the socket callback."""
    async def broken(type: str, data: dict[str, Any]) -> None:
        raise RuntimeError("adapter bug")

    run_id, out, _ = await stack.serve(raw({"type": "emit", "event": "custom", "data": {}}), call(1), DONE, emit=broken)
    assert [(f["type"], f["id"], f["code"]) for f in out] == [("error", None, "internal")]
    assert [r.kind for r in await stack.audit(run_id)] == ["internal"]
    await stack.still_serves()


async def test_a_downgraded_float_argument_does_not_break_the_audit_chain(stack):
    """On PostgreSQL the audit detail is jsonb: a float the bundle passed (1e16, -0.0, 1e308), quoted in the
    record of a downgrade, came back as another number and the tenant's chain failed to verify from then on."""
    policy = "version: 1\nrules:\n  - {id: dg, tool: echo, verdict: downgrade, downgrade: {args.model: small}}\n"
    await stack.rt.services.policies.put(stack.tid, policy, load_policy(policy, source="test").version)
    for icpt in stack.rt.interceptors:
        getattr(icpt, "forget_tenant", lambda t: None)(stack.tid)
    run_id, out, _ = await stack.serve(*(call(i, args={"model": v}) for i, v in enumerate((1e16, -0.0, 1e308, 2.5))),
                                       DONE)
    assert sorted((f["id"], f["result"]) for f in out) == [(i, {"model": "small"}) for i in range(4)]
    recs = await stack.audit(run_id)  # verifies the chain
    # the numbers themselves (on PostgreSQL as jsonb reads them back: sealed that way, PgAuditLog.append)
    assert sorted(r.detail["downgraded"]["args"]["model"]["from"] for r in recs if r.kind == "tool.allowed") == \
        sorted([1e16, -0.0, 1e308, 2.5])


async def test_refused_emits_count_against_the_events_limit(stack):
    """Each refused emit writes an audit record; they did not take from the events-per-second bucket, so
    a sandbox could write audit records as fast as it could send frames."""
    bad = [raw({"type": "emit", "event": "run.completed", "data": {}}) for _ in range(10)]
    run_id, out, sess = await stack.serve(*bad, call(1), DONE, events_per_s=3)
    assert sess.outcome.limit == "limit.events"
    assert [(f["type"], f["code"]) for f in out] == [("error", "input.invalid")] * 3
    assert [r.kind for r in await stack.audit(run_id)] == ["frame.invalid"] * 3 + ["limit.events"]
    assert await stack.events(run_id) == []


@pytest.mark.parametrize("stream", ["no", 1, None, {}])
async def test_a_stream_flag_that_is_not_a_bool_refuses_the_call(stack, stream):
    # "stream": "no" streamed; now the call is refused like any other bad field (one record, no execution)
    run_id, out, _ = await stack.serve(call(1, stream=stream), DONE)
    assert [(f["type"], f["id"], f["code"]) for f in out] == [("error", 1, "input.invalid")]
    assert [r.kind for r in await stack.audit(run_id)] == ["tool.invalid"]


@pytest.mark.parametrize("cut", ["header", "body", "body-empty"])
async def test_a_frame_cut_short_by_the_end_of_the_stream_is_a_bad_frame_with_its_record(stack, cut):
    """A sandbox that closed its socket inside a frame (a header of 2 of 4 bytes, a body of 10 of 40) ended
    the session as if it had closed between frames: no audit record for the bad frame."""
    frame = call(1)
    part = {"header": frame[:2], "body": frame[:HEADER.size + 10], "body-empty": frame[:HEADER.size]}[cut]
    run_id, out, _ = await stack.serve(part)
    assert [(f["type"], f["code"]) for f in out] == [("error", "frame.invalid")]
    recs = await stack.audit(run_id)
    assert [(r.kind, r.code) for r in recs] == [("frame.invalid", "frame.invalid")]
    assert "connection closed inside a frame" in recs[0].detail["message"]
    await stack.still_serves()


async def test_an_end_of_stream_between_frames_is_no_bad_frame(stack):
    run_id, out, _ = await stack.serve(call(1))
    assert [(f["type"], f["id"]) for f in out] == [("result", 1)]
    assert [r.kind for r in await stack.audit(run_id)] == ["tool.allowed", "tool.completed"]


async def test_an_audit_outage_tells_the_bundle_the_code_not_the_database_address(stack, monkeypatch):
    """The error frame of a call refused because its record could not be written carried the driver's
    message (the database's address or file path) into the sandbox and the tenant's audit records."""
    hidden = "cannot connect to PostgreSQL: ConnectionRefusedError: Connect call failed ('10.9.8.7', 5432)"

    async def append(*a, **k):
        raise StockadeError("audit.unavailable", hidden)  # as the adapters wrap store.unavailable

    monkeypatch.setattr(stack.rt.recorder.log, "append", append)
    _, out, _ = await stack.serve(call(1), DONE)
    assert [(f["type"], f["id"], f["code"]) for f in out] == [("error", 1, "audit.unavailable")]
    assert "10.9.8.7" not in json.dumps(out)
