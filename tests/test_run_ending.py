"""How a run ends when its sandbox writes faster than the supervisor reads.

Found by the SSE fan-out bench: a bundle that emitted 2,000 events and returned ended
``sandbox.crashed`` ("exited (code 0) without finishing") whenever the supervisor was busy
(100 live subscribers). Two causes, one test each:

* the SDK closed its socket and the process exited with up to 64 KiB of frames still in its
  own write buffer (``done`` among them);
* the worker gave the session only 2 s after the exit to read what was already in the socket.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from supervisor.runs import worker as worker_mod
from supervisor.runs.worker import Worker
from supervisor.session import RunSession, SessionOutcome

pytestmark = pytest.mark.timeout(60)
RUNTIME = Path(__file__).resolve().parents[1] / "sandbox" / "runtime"
FRAMES = 400

CHILD = textwrap.dedent(f"""
    import asyncio, socket, sys
    sys.path.insert(0, {str(RUNTIME)!r})
    from stockade_sdk.connection import Connection

    async def main(path):
        conn = await Connection.open(path)
        # a small kernel buffer, so most of what follows waits in the SDK's own buffer
        conn._writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for i in range({FRAMES}):
            await conn.notify({{"type": "emit", "event": "custom", "data": {{"i": i, "pad": "x" * 100}}}})
        await conn.notify({{"type": "done", "status": "ok"}})
        print("closing", flush=True)
        await conn.close()

    asyncio.run(main(sys.argv[1]))
""")


async def test_the_sdk_delivers_every_frame_before_the_process_exits(tmp_path):
    from supervisor.wire import HEADER, decode_body

    path = str(tmp_path / "s.sock")
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(reader)
        await finished.wait()
        writer.close()

    server = await asyncio.start_unix_server(on_connect, path=path, limit=1 << 20)
    child = await asyncio.create_subprocess_exec(sys.executable, "-I", "-S", "-c", CHILD, path,
                                                 stdout=asyncio.subprocess.PIPE)
    try:
        reader = await accepted
        # read nothing until the child is closing: its last frames are then in its own buffer
        assert (await child.stdout.readline()).strip() == b"closing"
        frames = []
        while True:
            try:
                head = await reader.readexactly(HEADER.size)
            except asyncio.IncompleteReadError as exc:
                assert exc.partial == b""
                break
            frames.append(decode_body(await reader.readexactly(HEADER.unpack(head)[0])))
        assert await child.wait() == 0
    finally:
        if child.returncode is None:
            child.kill()
        finished.set()
        server.close()
    assert [f["data"]["i"] for f in frames[:-1]] == list(range(FRAMES))
    assert frames[-1]["type"] == "done" and frames[-1]["status"] == "ok"


class _Proc:
    pid = os.getpid()
    returncode = 0

    async def wait(self) -> SimpleNamespace:
        return SimpleNamespace(returncode=0, stderr_tail=b"")

    def kill(self) -> None:
        pass


class _Session:
    def __init__(self) -> None:
        self.read_done = asyncio.Event()
        self.finished = asyncio.Event()
        self.outcome = SessionOutcome()

    def end(self) -> None:
        self.read_done.set()
        self.finished.set()


def _worker() -> Worker:
    runs = SimpleNamespace(get_run=lambda *a: asyncio.sleep(0))  # never canceled from outside
    services = SimpleNamespace(settings=SimpleNamespace(worker_concurrency=1), runs=runs)
    return Worker(services, chain=None, recorder=None, registry=None, worker_id="w")  # type: ignore[arg-type]


async def test_the_worker_reads_what_an_exited_sandbox_wrote_within_the_run_time_limit(monkeypatch):
    monkeypatch.setattr(worker_mod, "DRAIN_MIN_S", 0.05)
    run = SimpleNamespace(id="run_x", tenant_id="ten_x")
    sess = _Session()
    task = asyncio.ensure_future(_worker()._supervise(run, _Proc(), 30.0, [sess], {}))
    await asyncio.sleep(0.5)  # ten times the minimum: the session is still reading the sandbox's output
    assert not task.done(), task.result()
    sess.outcome.status = "ok"  # the done frame, read at last
    sess.end()
    assert await task == ("succeeded", {})


async def test_output_still_unread_at_the_time_limit_ends_the_run_timed_out(monkeypatch):
    monkeypatch.setattr(worker_mod, "DRAIN_MIN_S", 0.05)
    run = SimpleNamespace(id="run_x", tenant_id="ten_x")
    status, data = await _worker()._supervise(run, _Proc(), 0.2, [_Session()], {})
    assert status == "timed_out" and data["code"] == "run.timed_out"


async def test_a_sandbox_that_exits_without_a_done_frame_still_crashed(monkeypatch):
    run = SimpleNamespace(id="run_x", tenant_id="ten_x")
    sess = _Session()
    sess.end()  # EOF read: everything the sandbox wrote was read, and no done frame came
    status, data = await _worker()._supervise(run, _Proc(), 30.0, [sess], {})
    assert status == "failed" and data["code"] == "sandbox.crashed"



async def test_an_emit_after_the_run_ended_ends_the_session_quietly():
    """The worker may end the run (time limit) while the session still reads: the store then
    refuses the event, and the session stops instead of raising out of the socket callback."""
    from supervisor.errors import StockadeError
    from supervisor.wire import encode

    class Ended:
        bytes_emitted = 0

        async def emit(self, *a, **k):
            raise StockadeError("conflict", "the run has ended; no more events")

    sess = bare_session(emitter=Ended())
    reader = asyncio.StreamReader()
    reader.feed_data(encode({"type": "emit", "event": "custom", "data": {"i": 1}}, 1 << 20))
    reader.feed_data(encode({"type": "done", "status": "ok"}, 1 << 20))

    class Writer:
        closed = False

        def is_closing(self):
            return self.closed

        def write(self, data):
            pass

        async def drain(self):
            pass

        def close(self):
            self.closed = True

    w = Writer()
    await sess.serve(reader, w, greeted=True)  # type: ignore[arg-type]
    assert sess.finished.is_set() and w.closed
    assert sess.outcome.status is None  # it stopped at the refused emit


async def test_a_call_still_in_flight_when_the_sandbox_is_gone_gets_only_a_short_grace(monkeypatch):
    """Everything was read, but a call the bundle never waited for still runs: the run ends after
    the grace, not at its time limit (nobody is left to take the result)."""
    monkeypatch.setattr(worker_mod, "DRAIN_MIN_S", 0.05)
    run = SimpleNamespace(id="run_x", tenant_id="ten_x")
    sess = _Session()
    sess.outcome.status = "ok"
    sess.read_done.set()  # finished never comes
    status, _ = await asyncio.wait_for(_worker()._supervise(run, _Proc(), 30.0, [sess], {}), 5)
    assert status == "succeeded"


def bare_session(*, emitter: object, chain: object = None) -> RunSession:
    """A RunSession over nothing but ``emitter`` and ``chain`` (1 MiB frames and output, 100 events/s), for
    driving ``serve`` with a hand-fed reader and a fake writer."""
    settings = SimpleNamespace(sandbox_max_frame_bytes=1 << 20, sandbox_max_output_bytes=1 << 20,
                               sandbox_max_events_per_s=100)
    return RunSession(services=SimpleNamespace(settings=settings), chain=chain, recorder=None,  # type: ignore[arg-type]
                      binding=SimpleNamespace(run_id="run_x", tenant_id="ten_x"), emitter=emitter,  # type: ignore[arg-type]
                      welcome={})


async def test_a_reply_to_a_sandbox_that_hung_up_loses_nothing_it_wrote_before():
    """Found by a contract check: a bundle gathered 40 calls, the first refused one (rate.limited) raised out
    of ``main()``, and the SDK reported that and hung up while the other calls' replies were still coming.
    The next reply failed (EPIPE) and the transport closed at once, dropping the done frame still queued on
    the socket (nothing had read it yet): 17 runs in 20 ended ``sandbox.crashed`` ("the sandbox exited
    (code 1) without finishing"), the bundle's error and traceback lost. Here the reply is written before
    the done frame can be read, every time."""
    import socket

    from supervisor.wire import encode

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, writer = await asyncio.open_connection(sock=ours)
    entered, go = asyncio.Event(), asyncio.Event()

    async def chain(call: object) -> dict:
        entered.set()
        await go.wait()
        return {"ok": True}

    class Emitter:
        bytes_emitted = 0

        async def emit(self, *a: object) -> None:
            pass

        def emit_nowait(self, *a: object) -> asyncio.Future:
            stored = asyncio.get_running_loop().create_future()
            stored.set_result(None)
            return stored

    sess = bare_session(emitter=Emitter(), chain=chain)
    theirs.sendall(encode({"type": "call", "id": 1, "tool": "echo", "args": {}}, 1 << 20))
    serving = asyncio.ensure_future(sess.serve(reader, writer, greeted=True))
    try:
        await asyncio.wait_for(entered.wait(), 10)
        # the bundle gives up on its call: it reports its failure and hangs up, the call's reply still to come
        theirs.sendall(encode({"type": "done", "status": "error", "code": "rate.limited", "error_type": "ToolError",
                               "message": "rate.limited: slow down"}, 1 << 20))
        theirs.close()
        go.set()  # the reply goes out (and fails) before the loop next reads from the socket
        await asyncio.wait_for(serving, 10)
    finally:
        serving.cancel()
        theirs.close()
    assert (sess.outcome.status, sess.outcome.code, sess.outcome.message) == ("error", "rate.limited",
                                                                              "rate.limited: slow down")
    assert sess._spare is None  # the second descriptor is closed with the connection
