"""The run pipeline end to end through real HTTP, on both stacks (embedded; PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from supervisor.events import RunEmitter
from tests.e2e.harness import collect, idle_runs, read_sse

TEST_BUNDLES = Path(__file__).parent / "bundles"
TERMINAL = {"run.completed", "run.failed", "run.canceled", "run.timed_out"}


async def push(node, tenant_id: str, name: str):
    return await node.rt.registry.register_dir(TEST_BUNDLES / name, tenant_id)


async def start(client, bundle: str, text: str, **extra) -> dict:
    r = await client.post("/v1/runs", json={"bundle": bundle, "input": text, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def check_stream(events) -> None:
    assert [e.id for e in events] == list(range(1, len(events) + 1)), "ids are gap-free from 1"
    assert [e.data["seq"] for e in events] == [e.id for e in events]
    assert sum(e.event in TERMINAL for e in events) == 1 and events[-1].event in TERMINAL


async def test_echo_streams_word_by_word(node):
    _, key = await node.tenant()
    c = node.client(key)
    run = await start(c, "echo", "the quick brown fox")
    events = await collect(c, run["id"])
    check_stream(events)
    assert events[0].event == "run.started"
    answer = "".join(e.data["text"] for e in events if e.event == "message.delta" and e.data["channel"] == "answer")
    assert answer.split() == ["the", "quick", "brown", "fox"]
    assert events[-1].event == "run.completed"
    got = (await c.get(f"/v1/runs/{run['id']}")).json()
    assert got["status"] == "succeeded" and got["output"].split() == answer.split()


async def test_replay_after_n_and_last_event_id(node):
    _, key = await node.tenant()
    c = node.client(key)
    run = await start(c, "echo", "one two three four five six")
    full = await collect(c, run["id"])
    for n in (0, 1, 3, len(full) - 1):
        again = await collect(c, run["id"], after=n)
        assert [e.id for e in again] == list(range(n + 1, len(full) + 1))
        hdr = [e async for e in read_sse(c, f"/v1/runs/{run['id']}/events", headers={"Last-Event-ID": str(n)})]
        assert [e.id for e in hdr] == [e.id for e in again]
        assert [e.data for e in hdr] == [e.data for e in again]


async def test_a_cursor_at_the_end_of_an_ended_run_is_answered_204(node, monkeypatch):
    """A stream asked for from the terminal event on (what an EventSource sends when it reconnects
    after the server closed the stream) stayed open for ever, keep-alive after keep-alive, and so did
    one past the end: 204 tells an EventSource to stop reconnecting. A stream opened on a live run with
    a cursor past its end closes at the first keep-alive check after the run ended."""
    import app.sse

    tid, key = await node.tenant()
    c = node.client(key)
    run = await start(c, "echo", "one two")
    full = await collect(c, run["id"])
    for n in (len(full), len(full) + 5):
        for headers, query in (({}, f"?after={n}"), ({"Last-Event-ID": str(n)}, "")):
            async with asyncio.timeout(10):  # was: open until the client gave up
                r = await c.get(f"/v1/runs/{run['id']}/events{query}", headers=headers)
            assert r.status_code == 204 and r.content == b"", (n, r.status_code)
    monkeypatch.setattr(app.sse, "KEEPALIVE_S", 0.05)
    [live] = await idle_runs(node, tid, 1)
    emitter = RunEmitter(node.rt.services.runs, node.rt.services.events, tid, live)
    await emitter.emit("run.started", {})
    async with c.stream("GET", f"/v1/runs/{live}/events?after=5") as resp:
        assert resp.status_code == 200
        chunks = resp.aiter_bytes()
        assert (await anext(chunks)).startswith(b": stream of run")  # the stream is open: now end the run
        await emitter.finish("succeeded", {})
        async with asyncio.timeout(10):
            rest = b"".join([chunk async for chunk in chunks])
    assert b"id:" not in rest  # closed, nothing sent: the events it ended with were all before the cursor


async def test_client_hangs_up_and_misses_nothing(node):
    tid, key = await node.tenant()
    await push(node, tid, "sleeper")
    c = node.client(key)
    run = await start(c, "sleeper", "0.5")
    first = [e async for e in read_sse(c, f"/v1/runs/{run['id']}/events", stop_after=2)]  # hang up mid-run
    assert [e.id for e in first] == [1, 2]
    rest = [e async for e in read_sse(c, f"/v1/runs/{run['id']}/events", headers={"Last-Event-ID": "2"})]
    check_stream(first + rest)
    assert rest[-1].event == "run.completed"


async def test_cancel_kills_within_a_second(node):
    tid, key = await node.tenant()
    await push(node, tid, "sleeper")
    c = node.client(key)
    run = await start(c, "sleeper", "60")
    it = read_sse(c, f"/v1/runs/{run['id']}/events")
    async for e in it:
        if e.event == "message.delta":
            break
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await c.post(f"/v1/runs/{run['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    events = await collect(c, run["id"])
    check_stream(events)
    assert events[-1].event == "run.canceled"
    # the sandbox is gone: the worker releases the run within a second
    for _ in range(200):
        if not any(p.name == run["id"] for p in (node.data_dir / "runs").glob("*")):
            break
        await asyncio.sleep(0.01)
    assert loop.time() - t0 < 1.5
    assert not (node.data_dir / "runs" / run["id"]).exists()
    r = await c.post(f"/v1/runs/{run['id']}/cancel")
    assert r.status_code == 409 and r.json()["code"] == "run.not_cancelable"


async def test_timeout_ends_timed_out(node):
    tid, key = await node.tenant()
    await push(node, tid, "sleeper")  # limits.timeout_s: 2
    c = node.client(key)
    run = await start(c, "sleeper", "30")
    events = await collect(c, run["id"])
    check_stream(events)
    assert events[-1].event == "run.timed_out"
    assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "timed_out"


async def test_crash_reports_bundle_traceback_only(node):
    tid, key = await node.tenant()
    await push(node, tid, "crasher")
    c = node.client(key)
    run = await start(c, "crasher", "")
    events = await collect(c, run["id"])
    check_stream(events)
    last = events[-1]
    assert last.event == "run.failed"
    assert last.data["error_type"] == "KeyError" and "missing-key" in last.data["message"]
    tb = last.data["traceback"]
    assert "/bundle/main.py" in tb and "helper" in tb
    assert "boot.py" not in tb and "stockade_sdk" not in tb and "supervisor" not in tb


async def test_concurrent_runs_never_mix(node):
    _, key = await node.tenant()
    c = node.client(key)
    texts = [" ".join(f"r{i}w{j}" for j in range(12)) for i in range(4)]
    runs = await asyncio.gather(*(start(c, "echo", t) for t in texts))
    streams = await asyncio.gather(*(collect(c, r["id"]) for r in runs))
    for run, text, events in zip(runs, texts, streams, strict=True):
        check_stream(events)
        assert all(e.data["run_id"] == run["id"] for e in events)
        answer = "".join(e.data["text"] for e in events if e.event == "message.delta")
        assert answer.split() == text.split()


async def test_other_tenant_gets_404(node):
    _, key_a = await node.tenant()
    _, key_b = await node.tenant()
    a, b = node.client(key_a), node.client(key_b)
    run = await start(a, "echo", "secret words")
    await collect(a, run["id"])
    for path in (f"/v1/runs/{run['id']}", f"/v1/runs/{run['id']}/events", f"/v1/runs/{run['id']}/receipt"):
        r = await b.get(path)
        assert r.status_code == 404 and r.json()["code"] == "not_found", path
    r = await b.post(f"/v1/runs/{run['id']}/cancel")
    assert r.status_code == 404


async def test_idempotency_key_stripe_semantics(node):
    _, key = await node.tenant()
    c = node.client(key)
    body = {"bundle": "echo", "input": "once"}
    r1 = await c.post("/v1/runs", json=body, headers={"Idempotency-Key": "abc-1"})
    r2 = await c.post("/v1/runs", json=body, headers={"Idempotency-Key": "abc-1"})
    assert r1.status_code == 201 and r2.status_code == 201
    assert r1.json()["id"] == r2.json()["id"] and r2.headers.get("Idempotent-Replayed") == "true"
    r3 = await c.post("/v1/runs", json={"bundle": "echo", "input": "different"}, headers={"Idempotency-Key": "abc-1"})
    assert r3.status_code == 422 and r3.json()["code"] == "idempotency.mismatch"
    await collect(c, r1.json()["id"])


async def test_an_empty_idempotency_key_is_refused_and_creates_no_run(node):
    """Found by fuzzing: '' was taken as a key, so every request sent with an empty header shared one."""
    _, key = await node.tenant()
    c = node.client(key)
    for _ in range(2):
        r = await c.post("/v1/runs", json={"bundle": "echo", "input": "x"}, headers={"Idempotency-Key": ""})
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", r.text
    assert (await c.get("/v1/runs")).json()["data"] == []


async def test_hello_tools_calls_echo_through_the_chain(node):
    _, key = await node.tenant()
    c = node.client(key)
    run = await start(c, "hello-tools", "hi")
    events = await collect(c, run["id"])
    check_stream(events)
    assert events[-1].event == "run.completed", events[-1]
    kinds = [e.event for e in events]
    assert "tool.call" in kinds and "tool.result" in kinds and "custom" in kinds
    result = next(e for e in events if e.event == "tool.result")
    assert result.data["tool"] == "echo" and result.data["verdict"] == "allow"
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    assert [r["kind"] for r in audit] == ["tool.allowed", "tool.completed"]


async def test_history_in_a_conversation(node):
    tid, key = await node.tenant()
    await push(node, tid, "caller")
    c = node.client(key)
    r1 = await start(c, "echo", "first turn", conversation_id="conv-1")
    await collect(c, r1["id"])
    r2 = await start(c, "echo", "second turn", conversation_id="conv-1")
    await collect(c, r2["id"])
    # the runtime hands ctx.history to the bundle; the store's view is what it receives
    hist = await node.rt.services.runs.conversation_history(tid, "conv-1", r2["id"])
    assert hist[0] == {"role": "user", "content": "first turn"}
    assert hist[1]["role"] == "assistant" and hist[1]["content"].split() == ["first", "turn"]


async def test_output_flood_hits_the_limit(node):
    tid, key = await node.tenant()
    await push(node, tid, "flooder")
    c = node.client(key)
    run = await start(c, "flooder", "")
    events = await collect(c, run["id"])
    assert events[-1].event == "run.failed" and events[-1].data["code"] in ("limit.output", "limit.events")


async def test_bad_requests_change_nothing(node):
    _, key = await node.tenant()
    c = node.client(key)
    cases = [
        (b"{not json", 422), (json.dumps({"bundle": "echo"}).encode(), 422),
        (json.dumps({"bundle": "echo", "input": 5}).encode(), 422),
        (json.dumps({"bundle": "echo", "input": "x", "evil": 1}).encode(), 422),
        (json.dumps({"bundle": "../etc", "input": "x"}).encode(), 422),
        (json.dumps({"bundle": "nope", "input": "x"}).encode(), 404),
        # NUL: PostgreSQL cannot store it and SQLite could: refused on every stack alike
        (json.dumps({"bundle": "echo", "input": "a\x00b"}).encode(), 422),
        (json.dumps({"bundle": "echo", "input": "x", "user_id": "u\x00"}).encode(), 422),
    ]
    for body, status in cases:
        r = await c.post("/v1/runs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"]
    assert (await c.get("/v1/runs")).json()["data"] == []
    r = await node.client().get("/v1/runs")
    assert r.status_code == 401 and r.json()["code"] == "auth.missing"
    r = await node.client("stk_" + "a" * 38).get("/v1/runs")
    assert r.status_code == 401 and r.json()["code"] == "auth.invalid"


@pytest.mark.node_settings(sandbox_warm_pool=2)
async def test_warm_pool_runs_are_isolated_and_used_once(node):
    """Warm sandboxes: the same stream as cold ones; each slot serves one run; bundles differ per run."""
    tid, key = await node.tenant()
    await push(node, tid, "crasher")
    c = node.client(key)
    texts = [f"warm run {i}" for i in range(5)]
    runs = [await start(c, "echo", t) for t in texts]
    for run, text in zip(runs, texts, strict=True):
        events = await collect(c, run["id"])
        check_stream(events)
        assert "".join(e.data["text"] for e in events if e.event == "message.delta").split() == text.split()
    crash = await start(c, "crasher", "")
    events = await collect(c, crash["id"])
    assert events[-1].event == "run.failed" and events[-1].data["error_type"] == "KeyError"
    warm = node.rt.warm
    assert warm is not None and warm.size == 2
    slots = list(warm._ready)
    assert len({s.uid for s in slots}) == len(slots)  # a uid per slot, none reused by a finished run while live


@pytest.mark.node_settings(sandbox_max_events_per_s=100_000)
async def test_a_burst_then_return_delivers_every_event(node):
    """The bundle writes ~2 MB of emits as fast as it can and returns: the run completes with every
    event, in order. (The lost-tail bug this guards against needed a loaded supervisor to show;
    tests/test_run_ending.py reproduces each of its two causes deterministically.)"""
    tid, key = await node.tenant()
    await push(node, tid, "burster")
    c = node.client(key)
    run = await start(c, "burster", "4000")
    events = await collect(c, run["id"])
    check_stream(events)
    assert events[-1].event == "run.completed", events[-1].data
    assert [e.data["data"]["i"] for e in events if e.event == "custom"] == list(range(4000))


async def test_nul_characters_from_a_bundle_are_stored_alike_on_both_stacks(node):
    """PostgreSQL holds U+0000 neither in text nor in jsonb: such an emit ended the run
    sandbox.crashed there, and an exception message carrying one left the run without a terminal
    event. Every stack now stores U+FFFD in its place (a literal backslash-u0000 stays as it is)."""
    tid, key = await node.tenant()
    await push(node, tid, "nuller")
    c = node.client(key)
    run = await start(c, "nuller", "emit")
    events = await collect(c, run["id"])
    check_stream(events)
    assert events[-1].event == "run.completed", events[-1].data
    custom = next(e for e in events if e.event == "custom")
    assert custom.data["name"] == "n\ufffd"
    assert custom.data["data"] == {"s": "a\ufffdb", "k\ufffd": ["\ufffd"], "kept": "\\u0000"}
    assert next(e for e in events if e.event == "status").data["text"] == "st\ufffdatus"
    assert (await c.get(f"/v1/runs/{run['id']}")).json()["output"] == "an\ufffdswer"

    run = await start(c, "nuller", "raise")
    events = await collect(c, run["id"])
    check_stream(events)
    assert events[-1].event == "run.failed" and events[-1].data["message"] == "ValueError: bad\ufffdvalue"
    assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "failed"


async def test_a_run_the_store_cannot_record_ends_once_the_store_is_back(node, monkeypatch):
    """Store down (a full disk, a lost database) while a run starts: nothing about it can be written,
    not even its end. The worker keeps its job, spaced out, until the store answers again; then the
    run ends. It used to give up after three attempts, leaving the run 'running' for ever."""
    from supervisor.errors import StockadeError
    from supervisor.runs import worker as worker_mod

    monkeypatch.setattr(worker_mod, "OUTAGE_RETRY_S", 0.05)
    tid, key = await node.tenant()
    c = node.client(key)
    runs = node.rt.services.runs
    down, failures = asyncio.Event(), []
    down.set()
    real_append, real_finish = runs.append_event, runs.finish_run

    async def append_event(*a, **k):
        if down.is_set():
            failures.append(1)
            raise StockadeError("store.unavailable", "the disk is full")
        return await real_append(*a, **k)

    async def finish_run(*a, **k):
        if down.is_set():
            failures.append(1)
            raise StockadeError("store.unavailable", "the disk is full")
        return await real_finish(*a, **k)

    monkeypatch.setattr(runs, "append_event", append_event)
    monkeypatch.setattr(runs, "finish_run", finish_run)
    run = await start(c, "echo", "hello there")
    for _ in range(400):  # well past the three attempts a plain worker error gets
        if len(failures) >= 6:
            break
        await asyncio.sleep(0.025)
    assert len(failures) >= 6
    down.clear()  # the store is back
    events = await asyncio.wait_for(collect(c, run["id"]), 30)
    check_stream(events)
    assert events[-1].event in TERMINAL
    assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] in ("succeeded", "failed")
