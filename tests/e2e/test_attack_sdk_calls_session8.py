"""``ctx`` misused by a bundle (session 8; the in-sandbox SDK), on both stacks: what it sends that the
supervisor would refuse is refused in the bundle, as its own catchable error, and replies of any size the
supervisor may send are read. Run-ending attacks: ``test_attack_sdk_ending_session8.py``."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.test_attack_sdk_ending_session8 import run_bundles

pytestmark = pytest.mark.timeout(120)


async def test_a_tool_result_larger_than_the_frame_cap_reaches_the_bundle(node):
    """The supervisor sends a result up to 16 MiB (code.run: 20 files of 256 KiB, base64), but the SDK
    refused any reply over the 1 MiB frame cap: its reader died, the call failed with a closed connection,
    and every later ``ctx.call`` waited for ever - the run ended ``run.timed_out``."""
    got = await run_bundles(node, {
        "big-result": """
            CODE = "import os\\nfor i in range(20):\\n    open(f'f{i}.bin', 'wb').write(os.urandom(256 * 1024))\\n"
            async def main(ctx):
                r = await ctx.call("code.run", code=CODE)
                await ctx.answer(f"{len(r['files'])} files")
                r = await ctx.call("echo", after="big")
                await ctx.answer(" then " + r["after"])
        """,
    }, tools="[echo, code.run]")
    events, _ = got["big-result"]
    assert events[-1].event == "run.completed", events[-1].data
    answer = "".join(e.data["text"] for e in events if e.event == "message.delta")
    assert answer == "20 files then big"


async def test_data_nested_too_deep_is_refused_by_the_sdk_and_the_run_goes_on(node):
    """Call args or event data nested past the supervisor's 128 levels went out as they were: the
    supervisor refused the frame and closed the connection, so the bundle could not even catch the
    failure - its run ended ``sandbox.crashed``. The SDK refuses them itself (FrameError, frame.invalid)."""
    deep = """
        from stockade_sdk.wire import FrameError
        async def main(ctx):
            x = []
            for _ in range(200):
                x = [x]
            try:
                await ctx.%s
            except FrameError as e:
                await ctx.answer(e.code)
            r = await ctx.call("echo", y=1)
            await ctx.answer(" then " + str(r["y"]))
    """
    got = await run_bundles(node, {"deep-call": deep % 'call("echo", x=x)',
                                   "deep-emit": deep % 'emit("custom", name="n", data={"x": x})'})
    for name, (events, _) in got.items():
        assert events[-1].event == "run.completed", (name, events[-1].data)
        assert "".join(e.data["text"] for e in events if e.event == "message.delta") == "frame.invalid then 1"


async def test_an_emit_the_supervisor_refuses_raises_in_the_bundle(node):
    """``ctx.emit("run.completed")``, a message.delta on another channel or an unhashable type: the
    supervisor refused each with an error frame that the fire-and-forget emit never read - the bundle
    believed it had sent them. The SDK now raises ToolError(input.invalid) and sends nothing."""
    got = await run_bundles(node, {"bad-emits": """
        from stockade_sdk import ToolError
        async def main(ctx):
            for args, kw in ((("run.completed",), {}), (("message.delta",), {"channel": "x", "text": "t"}),
                             ((["custom"],), {}), (("message.delta",), {"channel": "answer", "text": 5})):
                try:
                    await ctx.emit(*args, **kw)
                except ToolError as e:
                    await ctx.answer(e.code + " ")
    """})
    events, _ = got["bad-emits"]
    assert events[-1].event == "run.completed"
    assert [e.event for e in events[1:-1]] == ["message.delta"] * 4
    assert "".join(e.data["text"] for e in events[1:-1]) == "input.invalid " * 4


async def test_a_raw_emit_with_an_unhashable_event_type_is_refused_not_a_crash(node):
    """An emit frame whose event is a list (sent past the SDK) made the session's handler raise TypeError:
    logged as a supervisor exception, audited ``internal``, the connection closed - for a bad emit, which
    otherwise gets input.invalid and leaves the connection open."""
    got = await run_bundles(node, {"raw-emit": """
        async def main(ctx):
            await ctx._conn.notify({"type": "emit", "event": ["custom"], "data": {}})
            r = await ctx.call("echo", y=1)
            await ctx.answer(str(r["y"]))
    """})
    assert got["raw-emit"][0][-1].event == "run.completed", got["raw-emit"][0][-1].data


async def test_a_call_after_the_sdks_reader_has_stopped_fails_at_once(tmp_path):
    """A reply the SDK cannot read (here: not JSON) ends its reader; the socket itself stays open, so a
    later ``ctx.call`` was written, registered its future - and waited for ever for a reply nothing would
    read (the run hung to its time limit). It now raises ConnectionError at once."""
    from sandbox.runtime.stockade_sdk.connection import Connection
    from supervisor.wire import HEADER, encode

    path = str(tmp_path / "s")
    release = asyncio.Event()

    async def supervisor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(HEADER.unpack(await reader.readexactly(HEADER.size))[0])  # hello
        writer.write(encode({"type": "welcome", "max_frame": 1 << 20, "run_id": "r", "bundle": "b"}))
        writer.write(HEADER.pack(5) + b"hello")  # not JSON: the SDK's reader gives up
        await writer.drain()
        await release.wait()  # ... but the connection stays open
        writer.close()

    server = await asyncio.start_unix_server(supervisor, path=path)
    try:
        conn = await Connection.open(path)
        await conn.handshake()
        async with asyncio.timeout(10):
            with pytest.raises(ConnectionError):
                await conn.request({"type": "call", "tool": "echo", "args": {}})  # the reader may still be running
            with pytest.raises(ConnectionError):
                await conn.request({"type": "call", "tool": "echo", "args": {}})
        await conn.close()
    finally:
        release.set()
        server.close()


@pytest.mark.node_settings(sandbox_max_frame_bytes=1024)
async def test_a_failure_is_reported_under_the_smallest_frame_cap(node):
    """With the smallest frame cap an operator may set (1 KiB) a failure's done frame (message up to 4,000
    characters, traceback up to 16,000) did not fit: the runtime could not report and the run ended
    ``sandbox.crashed``. It reports a shorter frame instead."""
    got = await run_bundles(node, {"long-failure": """
        async def main(ctx):
            raise ValueError("\\u00e9" * 5000)
    """})
    data = got["long-failure"][0][-1].data
    assert data["code"] == "run.failed" and data["error_type"] == "ValueError", data


async def _audit_kinds(client, run_id: str) -> dict[str, int]:
    kinds: dict[str, int] = {}
    params: dict = {"run_id": run_id, "limit": 1000}
    while True:
        page = (await client.get("/v1/audit", params=params)).json()
        for a in page["data"]:
            kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
        if not page.get("next_after"):
            return kinds
        params["after"] = page["next_after"]


async def test_connects_after_the_runs_connection_are_refused_not_audited_one_by_one(node):
    """The run's socket kept listening after its one connection: each further connect from the sandbox was
    accepted, checked (pidfd, peer credentials) and refused with an audit record - a loop of them wrote
    ~3,000 hash-chained ``peer.rejected`` records a second. The socket now stops listening once used."""
    got = await run_bundles(node, {"reconnect-flood": """
        import socket, time
        async def main(ctx):
            accepted = 0
            for _ in range(500):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect("/run/stockade/s")
                    accepted += 1
                except ConnectionRefusedError:
                    pass
                s.close()
            await ctx.answer(str(accepted))
    """})
    events, _ = got["reconnect-flood"]
    assert events[-1].event == "run.completed", events[-1].data
    assert "".join(e.data["text"] for e in events if e.event == "message.delta") == "0"
    assert (await _audit_kinds(node.clients[0], events[0].data["run_id"])).get("peer.rejected", 0) == 0

@pytest.mark.node_settings(sandbox_max_events_per_s=50)
async def test_bad_frames_are_metered_like_bad_emits(node):
    """A refused emit takes a token of the events-per-second limit (each refusal is an audit record), but a
    frame naming a tenant (``frame.identity``) or a call without an integer id (``frame.invalid``) is
    refused and audited without one: a loop of them wrote ~6,000 hash-chained audit records a second for as
    long as the run lasts (measured: 36,000 in 2 s; a run may last an hour)."""
    got = await run_bundles(node, {"identity-flood": """
        import time
        async def main(ctx):
            end = time.monotonic() + 1
            while time.monotonic() < end:
                await ctx._conn.notify({"type": "emit", "event": "custom", "data": {}, "tenant": "t_other"})
                await ctx._conn.notify({"type": "call", "id": "x", "tool": "echo", "args": {}})
            await ctx.call("echo")  # answered once everything before it was read
    """})
    events, _ = got["identity-flood"]
    kinds = await _audit_kinds(node.clients[0], events[0].data["run_id"])  # run_bundles' client: the tenant's
    bad = kinds.get("frame.identity", 0) + kinds.get("frame.invalid", 0)
    assert bad <= 200, kinds  # ~a second's worth of tokens, then limit.events


@pytest.mark.node_settings(sandbox_max_events_per_s=100_000)
async def test_a_reply_written_after_the_sandbox_exited_does_not_lose_its_done_frame(node):
    """The supervisor is still reading a burst when the sandbox returns and exits; one refused frame in it
    gets its error reply then - to a closed socket: EPIPE, the transport drops what was still unread (the
    answer, the done frame) and a run that returned normally ends ``sandbox.crashed``."""
    got = await run_bundles(node, {"burst-one-bad": """
        async def main(ctx):
            for i in range(3000):
                await ctx.emit("custom", name="e", data={"i": i, "pad": "x" * 200})
            await ctx._conn.notify({"type": "emit", "event": "custom", "data": {}, "tenant": "t_other"})
            await ctx.answer("end")
    """})
    events, _ = got["burst-one-bad"]
    assert events[-1].event == "run.completed", events[-1].data


async def test_a_tool_result_with_a_lone_surrogate_gets_the_call_an_error_not_silence():
    """A result no UTF-8 can carry (a lone surrogate, as an MCP server or an LLM provider may send in JSON)
    made the reply's encode raise UnicodeEncodeError out of the call's task: no reply at all, and the
    bundle's ``ctx.call`` waited until the run's time limit. It now gets ``frame.invalid`` (the call ran)."""
    from supervisor.wire import decode_body, encode
    from tests.test_run_ending import bare_session

    loop = asyncio.get_running_loop()

    class Emitter:
        bytes_emitted = 0

        def emit_nowait(self, *a):
            f = loop.create_future()
            f.set_result(None)
            return f

        async def emit(self, *a):
            pass

    async def chain(call):
        return {"text": "half a pair: \ud83d"}

    class Writer:
        def __init__(self):
            self.frames, self.closed = [], False

        def is_closing(self):
            return self.closed

        def write(self, data):
            self.frames.append(decode_body(data[4:]))

        async def drain(self):
            pass

        def close(self):
            self.closed = True

    sess = bare_session(emitter=Emitter(), chain=chain)
    reader = asyncio.StreamReader()
    reader.feed_data(encode({"type": "call", "id": 1, "tool": "echo", "args": {}}))
    reader.feed_eof()  # the session reads the call, then waits for it before it ends
    w = Writer()
    async with asyncio.timeout(10):
        await sess.serve(reader, w, greeted=True)  # type: ignore[arg-type]
    [reply] = [f for f in w.frames if f.get("id") == 1]
    assert reply["type"] == "error" and reply["code"] == "frame.invalid", reply
