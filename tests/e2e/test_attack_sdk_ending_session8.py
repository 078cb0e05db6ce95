"""How a run ends when its bundle is hostile or broken (session 8; the in-sandbox runtime and the worker),
on both stacks. ``ctx`` misused: ``test_attack_sdk_calls_session8.py``.

Each attack is a real bundle in a real sandbox. What must hold: exactly one terminal event per run, the
right status (``run.failed`` with the exception's type and a bounded message, the bundle's frames only),
no run held past its outcome or its time limit, and nothing the sandbox sends taken on trust.
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from supervisor.runs import worker as worker_mod
from tests.e2e.harness import collect, make_data_dir
from tests.e2e.test_run_pipeline import check_stream

pytestmark = pytest.mark.timeout(120)
TIMEOUT_S = 30  # each bundle's own time limit: every run here must end well before it


async def run_bundles(node, bundles: dict[str, str], tools: str = "[echo]",
                      limits: str = "") -> dict[str, tuple[list, float]]:
    """Register each source as its own bundle, run them all at once; name -> (events, seconds to the end)."""
    tid, key = await node.tenant()
    c = node.client(key)
    root = make_data_dir()
    for name, src in bundles.items():
        d = Path(root) / name
        d.mkdir()
        (d / "bundle.yaml").write_text(f"name: {name}\nversion: '1'\ntools: {tools}\nlimits:\n  timeout_s: {TIMEOUT_S}\n{limits}")
        (d / "main.py").write_text(textwrap.dedent(src))
        await node.rt.registry.register_dir(d, tid)

    async def one(name: str) -> tuple[list, float]:
        t0 = time.monotonic()
        r = await c.post("/v1/runs", json={"bundle": name, "input": "hi"})
        assert r.status_code == 201, r.text
        events = await asyncio.wait_for(collect(c, r.json()["id"]), TIMEOUT_S + 30)
        check_stream(events)  # exactly one terminal event, gap-free
        return events, time.monotonic() - t0

    results = await asyncio.gather(*(one(n) for n in bundles))
    return dict(zip(bundles, results, strict=True))


def _parent(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _failed(events: list) -> dict:
    last = events[-1]
    assert last.event == "run.failed", (last.event, last.data)
    return last.data


# --- exceptions that fight back ---------------------------------------------------------------------

HOSTILE_EXCEPTIONS = {
    # name: (source, error_type, text the message starts with)
    "str-raises": ("""
        class E(Exception):
            def __str__(self):
                raise RuntimeError("no str for you")
        async def main(ctx):
            raise E()
    """, "E", "<exception str() failed>"),
    "str-not-str": ("""
        class E(Exception):
            def __str__(self):
                return 42
        async def main(ctx):
            raise E()
    """, "E", "<exception str() failed>"),
    "str-huge": ("""
        async def main(ctx):
            raise ValueError("x" * 10_000_000)
    """, "ValueError", "xxxx"),
    "str-surrogate": ("""
        async def main(ctx):
            raise ValueError("bad \\udc80 nul \\x00 ansi \\x1b[31m end")
    """, "ValueError", "bad \\udc80 nul"),
    "name-huge": ("""
        class Meta(type):
            @property
            def __name__(cls):
                return "N" * 5_000_000
        class E(Exception, metaclass=Meta):
            pass
        async def main(ctx):
            raise E("m")
    """, "N" * 200, "m"),
    "name-raises": ("""
        class Meta(type):
            @property
            def __name__(cls):
                raise SystemExit("no name")
        class E(Exception, metaclass=Meta):
            pass
        async def main(ctx):
            raise E("m")
    """, "Exception", "m"),
    "code-huge": ("""
        class E(Exception):
            code = "c" * 2_000_000
        async def main(ctx):
            raise E("m")
    """, "E", "m"),
    "code-raises": ("""
        class E(Exception):
            @property
            def code(self):
                raise KeyboardInterrupt
        async def main(ctx):
            raise E("m")
    """, "E", "m"),
    "notes-raise": ("""
        class E(Exception):
            @property
            def __notes__(self):
                raise RuntimeError("no notes")
        async def main(ctx):
            raise E("m")
    """, "E", "m"),
    "traceback-raises": ("""
        class E(Exception):
            @property
            def __traceback__(self):
                raise RuntimeError("no traceback")
        async def main(ctx):
            raise E("m")
    """, "E", "m"),
    "chain-cyclic": ("""
        async def main(ctx):
            a, b = ValueError("a"), KeyError("b")
            a.__cause__ = b; b.__cause__ = a; a.__context__ = b; b.__context__ = a
            raise a
    """, "ValueError", "a"),
    "chain-deep": ("""
        async def main(ctx):
            e = ValueError("0")
            for i in range(10_000):
                n = ValueError(str(i)); n.__cause__ = e; e = n
            raise e
    """, "ValueError", "9999"),
    "recursion": ("""
        def f(n):
            return f(n + 1)
        async def main(ctx):
            f(0)
    """, "RecursionError", "maximum recursion depth"),
}


async def test_hostile_exceptions_end_the_run_failed_with_their_type_and_a_bounded_message(node):
    """An exception whose __str__ raised or returned a non-str, whose class name was megabytes (a metaclass
    property) or whose message held a lone surrogate crashed the runtime while it reported the failure: the
    run ended ``sandbox.crashed`` with the runtime's own traceback on stderr, and the bundle's lost."""
    got = await run_bundles(node, {name: src for name, (src, _, _) in HOSTILE_EXCEPTIONS.items()})
    for name, (_, error_type, starts) in HOSTILE_EXCEPTIONS.items():
        events, took = got[name]
        data = _failed(events)
        assert data["code"] == "run.failed", (name, data)
        assert data["error_type"] == error_type, (name, data["error_type"][:80])
        assert data["message"].startswith(f"{error_type}: {starts}"), (name, data["message"][:200])
        assert len(data["message"]) <= 5000 and len(data["traceback"]) <= 17000, name
        assert "boot.py" not in data["traceback"] and "stockade_sdk" not in data["traceback"], name
        assert took < TIMEOUT_S, (name, took)
    assert "/bundle/main.py" in got["recursion"][0][-1].data["traceback"]


BASE_EXCEPTIONS = {
    # name: (source, terminal event, error_type)
    "keyboard-interrupt": ("""
        async def main(ctx):
            raise KeyboardInterrupt("stop")
    """, "run.failed", "KeyboardInterrupt"),
    "system-exit-object": ("""
        import sys
        async def main(ctx):
            sys.exit({"a": 1})
    """, "run.failed", "SystemExit"),
    "system-exit-zero": ("""
        import sys
        async def main(ctx):
            await ctx.answer("bye")
            sys.exit(0)
    """, "run.completed", None),
    "generator-exit": ("""
        async def main(ctx):
            raise GeneratorExit()
    """, "run.failed", "GeneratorExit"),
    "cancelled": ("""
        import asyncio
        async def main(ctx):
            raise asyncio.CancelledError()
    """, "run.failed", "CancelledError"),
    "base-subclass": ("""
        class Boom(BaseException):
            pass
        async def main(ctx):
            raise Boom("boom")
    """, "run.failed", "Boom"),
    "module-getattr": ("""
        async def main(ctx):
            pass
        del globals()["main"]
        def __getattr__(name):
            raise SystemExit(3)
    """, "run.failed", "SystemExit"),
}


async def test_base_exceptions_out_of_main_are_reported_not_crashes(node):
    """KeyboardInterrupt, SystemExit(obj), GeneratorExit, CancelledError or any BaseException subclass out of
    main went past the runtime's ``except Exception``: no done frame, ``sandbox.crashed``, the runtime's and
    asyncio's frames on stderr. ``sys.exit(0)`` is a success, as for any program."""
    got = await run_bundles(node, {name: src for name, (src, _, _) in BASE_EXCEPTIONS.items()})
    for name, (_, terminal, error_type) in BASE_EXCEPTIONS.items():
        events, _ = got[name]
        assert events[-1].event == terminal, (name, events[-1].data)
        if error_type:
            data = events[-1].data
            assert data["code"] == "run.failed" and data["error_type"] == error_type, (name, data)
            assert "stderr" not in data and "boot.py" not in data["traceback"], (name, data)
    assert got["system-exit-object"][0][-1].data["message"] == "SystemExit: {'a': 1}"


async def test_stderr_text_or_exit_status_does_not_replace_the_reported_outcome(node):
    """A bundle that printed 'MemoryError' (or 'No space left on device') to stderr, then raised ValueError,
    ended ``limit.memory`` ('the sandbox ran out of memory'): the stderr guess beat the runtime's done frame,
    and the real exception was dropped; one that reported success then exited 152 ended ``limit.cpu``.
    Without a done frame the guess still stands (it is all there is)."""
    got = await run_bundles(node, {
        "says-oom": """
            import sys
            async def main(ctx):
                print("MemoryError", file=sys.stderr, flush=True)
                raise ValueError("the real failure")
        """,
        "says-disk": """
            import sys
            async def main(ctx):
                print("OSError: [Errno 28] No space left on device", file=sys.stderr, flush=True)
                raise KeyError("the real failure")
        """,
        "says-cpu": """
            import os
            async def main(ctx):
                await ctx._conn.notify({"type": "done", "status": "ok"})
                os._exit(128 + 24)  # reads as killed by SIGXCPU
        """,
        "dies-of-oom": """
            import os, sys
            async def main(ctx):
                print("MemoryError", file=sys.stderr, flush=True)
                os._exit(1)
        """,
    })
    oom = _failed(got["says-oom"][0])
    assert oom["code"] == "run.failed" and oom["error_type"] == "ValueError", oom
    disk = _failed(got["says-disk"][0])
    assert disk["code"] == "run.failed" and disk["error_type"] == "KeyError", disk
    assert got["says-cpu"][0][-1].event == "run.completed", got["says-cpu"][0][-1].data
    assert _failed(got["dies-of-oom"][0])["code"] == "limit.memory"


async def test_the_runs_error_code_is_one_of_the_table_or_none(node):
    """The done frame's ``code`` became the run's ``error_code`` as sent: a bundle writing its own done
    frame gave its run a 16 KB code, or any made-up one. A ToolError passed on keeps its (table) code.
    A done frame without a (str) type or message read 'None: None'."""
    got = await run_bundles(node, {
        "code-made-up": """
            async def main(ctx):
                await ctx._conn.notify({"type": "done", "status": "error", "error_type": "E", "message": "m",
                                        "code": "x" * 10000})
        """,
        "code-dotted": """
            async def main(ctx):
                await ctx._conn.notify({"type": "done", "status": "error", "error_type": "E", "message": "m",
                                        "code": "my.own_code"})
        """,
        "done-bare-error": """
            async def main(ctx):
                await ctx._conn.notify({"type": "done", "status": "error", "error_type": 5, "message": {"a": 1}})
        """,
        "code-tool-error": """
            from stockade_sdk import ToolError
            async def main(ctx):
                raise ToolError("budget.exceeded", "out of money")
        """,
    })
    for name in ("code-made-up", "code-dotted"):
        data = _failed(got[name][0])
        assert data["code"] == "run.failed" and data["error_type"] == "E", (name, data["code"][:80])
    assert _failed(got["code-tool-error"][0])["code"] == "budget.exceeded"
    assert _failed(got["done-bare-error"][0])["message"] == "Error"  # was "None: None"


# --- a run that is over, but whose sandbox is not ---------------------------------------------------


async def test_what_a_bundle_leaves_behind_does_not_hold_its_finished_run(node, monkeypatch):
    """A non-daemon thread, a task that swallows its cancellation or a blocking executor job kept the
    process alive after the done frame (interpreter shutdown waits for them): a run that had reported
    success ended ``run.timed_out`` at its time limit. The runtime ends the process once it has reported
    (the worker's own backstop, below, is put out of reach here)."""
    monkeypatch.setattr(worker_mod, "DRAIN_MIN_S", float(TIMEOUT_S))
    got = await run_bundles(node, {
        "left-thread": """
            import threading, time
            async def main(ctx):
                threading.Thread(target=time.sleep, args=(3600,)).start()
                await ctx.answer("done")
        """,
        "left-task": """
            import asyncio
            async def stubborn():
                while True:
                    try:
                        await asyncio.sleep(3600)
                    except asyncio.CancelledError:
                        pass
            async def main(ctx):
                ctx.keep = asyncio.get_running_loop().create_task(stubborn())
                await asyncio.sleep(0)
                await ctx.answer("done")
        """,
        "left-executor-job": """
            import asyncio, time
            async def main(ctx):
                asyncio.get_running_loop().run_in_executor(None, time.sleep, 3600)
                await ctx.answer("done")
        """,
    })
    for name, (events, took) in got.items():
        assert events[-1].event == "run.completed", (name, events[-1].data)
        assert took < TIMEOUT_S / 2, (name, took)


async def test_a_sandbox_whose_session_is_over_is_stopped(node):
    """Once the session has read the sandbox's last frame nothing the sandbox does reaches anyone, but the
    run went on to its time limit: garbage on the socket (error frame, closed connection) then a sleep, a
    hang-up then a long computation (``run.timed_out``), or a done frame sent by the bundle itself followed by
    a block that keeps the runtime from ever exiting (a success ended ``run.timed_out``). The worker stops a
    sandbox still there a short grace after its session ended."""
    got = await run_bundles(node, {
        "garbage-then-sleep": """
            import asyncio, os
            async def main(ctx):
                sock = ctx._conn._writer.get_extra_info("socket")
                os.write(sock.fileno(), b"\\x00\\x00\\x00\\x05hello")
                await asyncio.sleep(3600)
        """,
        "hang-up-then-compute": """
            import os, time
            async def main(ctx):
                os.close(ctx._conn._writer.get_extra_info("socket").fileno())
                time.sleep(3600)
        """,
        "own-done-then-block": """
            import time
            async def main(ctx):
                await ctx.answer("done")
                await ctx._conn.notify({"type": "done", "status": "ok"})
                time.sleep(3600)  # the runtime never gets to report or to exit
        """,
    })
    for name, (_, took) in got.items():
        assert took < TIMEOUT_S / 2, (name, took)
    assert got["own-done-then-block"][0][-1].event == "run.completed"
    # nothing of them is left: the worker's run tasks end (each waits for its pid namespace to be gone)
    if node.rt.worker._tasks:
        await asyncio.wait(node.rt.worker._tasks, timeout=20)
    assert not node.rt.worker._tasks
    # no sandbox of this node is left (other children of the test process - a suite's fake servers - are not ours)
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _parent(pid) == os.getpid()
                and str(node.data_dir).encode() in _cmdline(pid)]
    for name in ("garbage-then-sleep", "hang-up-then-compute"):
        data = _failed(got[name][0])
        # frame.invalid once the session records the protocol error as the run's end (supervisor/session.py)
        assert data["code"] in ("sandbox.crashed", "frame.invalid"), (name, data)


@pytest.mark.node_settings(sandbox_warm_pool=1)
async def test_a_warm_sandbox_whose_session_is_over_is_stopped_too(node):
    """The same backstop on the warm pool's path (a sandbox started before its run, its hello already read)."""
    async with asyncio.timeout(30):  # the pool's first sandbox is up (it has no event for it): the run takes it
        while not node.rt.warm._ready:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    got = await run_bundles(node, {"warm-own-done-then-block": """
        import time
        async def main(ctx):
            await ctx._conn.notify({"type": "done", "status": "ok"})
            time.sleep(3600)
    """})
    events, took = got["warm-own-done-then-block"]
    assert events[-1].event == "run.completed" and took < TIMEOUT_S / 2, (events[-1].data, took)


async def test_limits_no_sandbox_can_meet_fail_the_run_as_the_bundles_error(node):
    """``cpu_s: 0.5`` (valid in a manifest) became RLIMIT_CPU 0 and ``memory_mb: 8`` is below what the
    interpreter needs: Limits refused both with a ValueError out of the worker - logged as a worker error,
    the job retried, the run ended ``run.worker_lost`` (retryable, and false). Now cpu_s keeps its
    fraction (the kernel's whole second) and an unmeetable request fails the run ``bundle.invalid``."""
    ok = await run_bundles(node, {"cpu-half": "async def main(ctx):\n    await ctx.answer('hi')\n"},
                           limits="  cpu_s: 0.5\n")
    assert ok["cpu-half"][0][-1].event == "run.completed", ok["cpu-half"][0][-1].data
    bad = await run_bundles(node, {"mem-eight": "async def main(ctx):\n    pass\n"}, limits="  memory_mb: 8\n")
    data = _failed(bad["mem-eight"][0])
    assert data["code"] == "bundle.invalid" and "memory_mb" in data["message"], data


@pytest.mark.node_settings(sandbox_max_output_bytes=256 * 1024)
async def test_the_output_limit_set_or_asked_for_holds_for_stdout_too(node):
    """STOCKADE_SANDBOX_MAX_OUTPUT_BYTES capped what a bundle emits but never reached the launcher, whose
    stdout + stderr cap stayed at 8 MiB whatever the operator set; a bundle's own (narrower)
    ``limits.max_output_bytes`` was accepted and ignored."""
    flood = """
        import os
        async def main(ctx):
            for _ in range(4):
                os.write(1, b"x" * (1 << 20))
            await ctx.answer("flooded")
    """
    got = await run_bundles(node, {"stdout-over-setting": flood})
    assert _failed(got["stdout-over-setting"][0])["code"] == "limit.output"
    asked = await run_bundles(node, {"stdout-over-own": flood.replace("1 << 20", "1 << 15")},
                              limits="  max_output_bytes: 65536\n")
    assert _failed(asked["stdout-over-own"][0])["code"] == "limit.output"


# --- already defended: kept as regression guards -----------------------------------------------------


async def test_odd_exits_floods_and_forks_end_once_with_the_right_status(node):
    """Each ends once and promptly: os._exit(256) (status 0, no done frame), SIGSEGV, a binary stdout flood
    with no newline (``limit.output``), a forked child that keeps the socket and outlives main, an answer
    with a lone surrogate (the bundle gets the error, the run goes on), ctx.call args named like protocol
    fields (they stay args), and 1,000 concurrent calls (each answered, none mixed up)."""
    got = await run_bundles(node, {
        "exit-256": """
            import os
            async def main(ctx):
                os._exit(256)
        """,
        "segv": """
            import ctypes
            async def main(ctx):
                ctypes.string_at(0)
        """,
        "stdout-flood": """
            import os
            async def main(ctx):
                b = os.urandom(1 << 20).replace(b"\\n", b"x")
                while True:
                    os.write(1, b)
        """,
        "fork-keeps-socket": """
            import os, time
            async def main(ctx):
                if os.fork() == 0:
                    time.sleep(3600)
                    os._exit(0)
                await ctx.answer("parent done")
        """,
        "surrogate-answer": """
            from stockade_sdk.wire import FrameError
            async def main(ctx):
                try:
                    await ctx.answer("a\\udc80b")
                except FrameError as e:
                    await ctx.answer(e.code)
        """,
        "protocol-named-args": """
            async def main(ctx):
                r = await ctx.call("echo", id=5, type="x", v=3, tool="y", stream=True, run_id="run_other")
                await ctx.answer(repr(sorted(r.items())))
        """,
        "thousand-calls": """
            import asyncio
            from stockade_sdk import ToolError
            async def main(ctx):
                rs = await asyncio.gather(*(ctx.call("echo", n=i) for i in range(1000)), return_exceptions=True)
                ok = sum(1 for i, r in enumerate(rs) if isinstance(r, dict) and r.get("n") == i)
                limited = sum(1 for r in rs if isinstance(r, ToolError) and r.code == "rate.limited")
                await ctx.answer(f"{ok + limited} {ok > 0}")
        """,
    })
    assert _failed(got["exit-256"][0])["code"] == "sandbox.crashed"
    assert "139" in _failed(got["segv"][0])["message"]
    assert _failed(got["stdout-flood"][0])["code"] == "limit.output"
    for name in ("fork-keeps-socket", "surrogate-answer", "protocol-named-args", "thousand-calls"):
        assert got[name][0][-1].event == "run.completed", (name, got[name][0][-1].data)
    text = {n: "".join(e.data.get("text", "") for e in got[n][0] if e.event == "message.delta") for n in got}
    assert text["surrogate-answer"] == "frame.invalid"
    assert all(f"('{k}'," in text["protocol-named-args"] for k in ("id", "type", "v", "tool", "stream", "run_id"))
    assert text["thousand-calls"] == "1000 True"  # each call answered: its result, or rate.limited
    for name, (_, took) in got.items():
        assert took < TIMEOUT_S, (name, took)
    assert json.dumps([e.data for e in got["segv"][0]])  # every event stored is plain JSON


async def test_a_run_that_leaves_a_deep_tree_is_cleaned_up(node):
    """A bundle that made a directory tree 1,500 deep in its work dir: on Python 3.11 shutil.rmtree raised
    RecursionError (ignore_errors or not) when the run ended, so the run's folder (tenant files) stayed on
    disk, and a warm slot's lock was never released. supervisor.rmtree.remove_tree takes any depth."""
    got = await run_bundles(node, {"deep-tree": """
        import os
        async def main(ctx):
            os.chdir("/work")
            for _ in range(1500):
                os.mkdir("d")
                os.chdir("d")
            open("leaf", "w").write("x")
            await ctx.answer("deep")
    """})
    events, _ = got["deep-tree"]
    assert events[-1].event == "run.completed", events[-1].data
    run_id = events[-1].data["run_id"]
    runs = Path(node.data_dir) / "runs"
    for _ in range(100):  # the folder goes once the worker is done with the run, right after its last event
        if not (runs / run_id).exists():
            break
        await asyncio.sleep(0.05)
    assert not (runs / run_id).exists()
