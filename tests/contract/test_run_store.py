"""RunStore contract: runs, conversations and the gap-free per-run event log."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from supervisor.errors import StockadeError
from tests.contract._helpers import make_run, store


@pytest.fixture
async def ctx(sql_db):
    return sql_db, store(sql_db, "RunStore"), await sql_db.new_tenant()


async def test_create_get_and_tenant_isolation(ctx):
    sql_db, runs, t = ctx
    other = await sql_db.new_tenant()
    run = make_run(t, project_id="prj_1", user_id="usr_1", key_id="key_1", conversation_id="c1")
    created, new = await runs.create_run(run)
    assert new is True and created == run
    assert await runs.get_run(t, run.id) == run
    assert await runs.get_run(other, run.id) is None
    assert await runs.get_run_any_tenant(run.id) == run
    assert await runs.get_run_any_tenant("run_nope") is None


async def test_create_run_honours_idempotency_key(ctx):
    _, runs, t = ctx
    first, new = await runs.create_run(make_run(t, idempotency_key="k1", request_hash="h1"))
    again, new2 = await runs.create_run(make_run(t, idempotency_key="k1", request_hash="h2"))
    assert new and not new2 and again == first
    # the same key in another tenant is independent; runs without a key never collide
    _, new3 = await runs.create_run(make_run(t))
    _, new4 = await runs.create_run(make_run(t))
    assert new3 and new4


async def test_concurrent_create_with_one_key_creates_one_run(ctx):
    _, runs, t = ctx
    barrier = asyncio.Barrier(8)

    async def create(i: int):
        await barrier.wait()
        return await runs.create_run(make_run(t, idempotency_key="same", input=f"in{i}"))

    results = await asyncio.gather(*(create(i) for i in range(8)))
    assert sum(1 for _, new in results if new) == 1
    assert len({r.id for r, _ in results}) == 1


async def test_create_run_bad_input_changes_nothing(ctx):
    _, runs, t = ctx
    with pytest.raises(StockadeError) as err:
        await runs.create_run(make_run("ten_missing"))
    assert err.value.code == "not_found"
    with pytest.raises(StockadeError) as err:
        await runs.create_run(make_run(t, status="succeeded"))
    assert err.value.code == "input.invalid"
    run = make_run(t)
    await runs.create_run(run)
    with pytest.raises(StockadeError) as err:
        await runs.create_run(make_run(t, id=run.id))
    assert err.value.code == "conflict"
    assert len(await runs.list_runs(t)) == 1


async def test_list_runs_newest_first_with_cursor(ctx):
    _, runs, t = ctx
    made = [make_run(t, created_at=1000.0 + i) for i in range(5)]
    for r in made:
        await runs.create_run(r)
    listed = await runs.list_runs(t, limit=3)
    assert [r.id for r in listed] == [made[4].id, made[3].id, made[2].id]
    older = await runs.list_runs(t, limit=10, before=listed[-1].created_at)
    assert [r.id for r in older] == [made[1].id, made[0].id]


async def test_list_runs_by_status_spans_tenants(ctx):
    sql_db, runs, t = ctx
    other = await sql_db.new_tenant()
    a, b = make_run(t, status="queued"), make_run(other, status="running")
    await runs.create_run(a)
    await runs.create_run(b)
    ids = {r.id for r in await runs.list_runs_by_status(("queued", "running"), limit=100_000)}
    assert {a.id, b.id} <= ids
    with pytest.raises(StockadeError):
        await runs.list_runs_by_status(("bogus",))


async def test_ended_among_spans_tenants_in_one_call(ctx):
    sql_db, runs, t = ctx
    other = await sql_db.new_tenant()
    live, done, theirs = make_run(t, status="running"), make_run(t, status="running"), make_run(other, status="running")
    for r in (live, done, theirs):
        await runs.create_run(r)
    await runs.finish_run(t, done.id, "canceled", "run.canceled", {})
    await runs.finish_run(other, theirs.id, "failed", "run.failed", {})
    assert await runs.ended_among([live.id, done.id, theirs.id, "run_unknown"]) == {done.id, theirs.id}
    assert await runs.ended_among([]) == set()
    many = [f"run_x{i}" for i in range(1200)] + [done.id]  # past one page of ids
    assert await runs.ended_among(many) == {done.id}


async def test_start_run_takes_a_queued_run_once(ctx):
    _, runs, t = ctx
    run = make_run(t, status="queued")
    await runs.create_run(run)
    first = await runs.start_run(t, run.id, worker_id="w1", started_at=12.5)
    assert first is not None and (first.status, first.worker_id, first.started_at) == ("running", "w1", 12.5)
    assert await runs.start_run(t, run.id, worker_id="w2", started_at=13.0) is None  # a second claimer
    assert (await runs.get_run(t, run.id)).worker_id == "w1"
    await runs.finish_run(t, run.id, "canceled", "run.canceled", {})
    assert await runs.start_run(t, run.id, worker_id="w3", started_at=14.0) is None
    assert await runs.start_run(t, "run_missing", worker_id="w1", started_at=1.0) is None


async def test_set_status_updates_fields_and_refuses_terminal(ctx):
    _, runs, t = ctx
    run = make_run(t)
    await runs.create_run(run)
    moved = await runs.set_status(t, run.id, "running", started_at=1234.5, worker_id="w1")
    assert moved is not None and moved.status == "running" and moved.started_at == 1234.5 and moved.worker_id == "w1"
    with pytest.raises(StockadeError) as err:
        await runs.set_status(t, run.id, "succeeded")
    assert err.value.code == "input.invalid"
    with pytest.raises(StockadeError) as err:
        await runs.set_status(t, run.id, "running", last_seq=99)
    assert err.value.code == "input.invalid"
    with pytest.raises(StockadeError) as err:
        await runs.set_status(t, "run_missing", "running")
    assert err.value.code == "not_found"
    await runs.finish_run(t, run.id, "succeeded", "run.completed", {})
    assert await runs.set_status(t, run.id, "running") is None
    assert (await runs.get_run(t, run.id)).status == "succeeded"


async def test_events_are_sequenced_replayable_and_scoped(ctx):
    sql_db, runs, t = ctx
    other = await sql_db.new_tenant()
    run = make_run(t)
    await runs.create_run(run)
    e1 = await runs.append_event(t, run.id, "run.started", {})
    e2 = await runs.append_event(t, run.id, "message.delta", {"channel": "answer", "text": "Hé"})
    assert (e1.seq, e2.seq) == (1, 2)
    assert e2.to_wire() == {"run_id": run.id, "seq": 2, "type": "message.delta", "channel": "answer", "text": "Hé"}
    assert [e.seq for e in await runs.events_after(t, run.id, 0)] == [1, 2]
    assert await runs.events_after(t, run.id, 1) == [e2]
    assert await runs.events_after(t, run.id, 0, limit=1) == [e1]
    assert await runs.events_after(other, run.id, 0) == []
    with pytest.raises(StockadeError) as err:
        await runs.append_event(other, run.id, "x", {})
    assert err.value.code == "not_found"
    with pytest.raises(StockadeError) as err:
        await runs.append_event(t, run.id, "x", {"bad": object()})
    assert err.value.code == "input.invalid"
    assert (await runs.get_run(t, run.id)).last_seq == 2


async def test_finish_run_appends_exactly_one_terminal_event(ctx):
    _, runs, t = ctx
    run = make_run(t)
    await runs.create_run(run)
    await runs.append_event(t, run.id, "run.started", {})
    end = await runs.finish_run(t, run.id, "failed", "run.failed", {"code": "tool.failed"},
                                error_code="tool.failed", error_message="boom", output="partial")
    assert end is not None and end.seq == 2 and end.type == "run.failed"
    got = await runs.get_run(t, run.id)
    assert got.status == "failed" and got.error_code == "tool.failed" and got.output == "partial"
    assert got.ended_at is not None and got.last_seq == 2
    assert await runs.finish_run(t, run.id, "succeeded", "run.completed", {}) is None
    with pytest.raises(StockadeError) as err:
        await runs.append_event(t, run.id, "message.delta", {})
    assert err.value.code == "conflict"
    assert [e.type for e in await runs.events_after(t, run.id, 0)] == ["run.started", "run.failed"]
    with pytest.raises(StockadeError) as err:
        await runs.finish_run(t, run.id, "running", "x", {})
    assert err.value.code == "input.invalid"
    with pytest.raises(StockadeError) as err:
        await runs.finish_run(t, "run_missing", "failed", "run.failed", {})
    assert err.value.code == "not_found"


async def test_keep_output_fills_only_an_ended_runs_missing_output(ctx):
    """Session 20: a run canceled through the API ends there, with no output (the API never saw its
    answer); its worker, told of the end, keeps what it streamed until then - and nothing else."""
    _, runs, t = ctx
    other = await ctx[0].new_tenant()
    run = make_run(t)
    await runs.create_run(run)
    assert not await runs.keep_output(t, run.id, "too soon")  # not ended: the end itself stores the output
    assert (await runs.get_run(t, run.id)).output is None
    assert await runs.finish_run(t, run.id, "canceled", "run.canceled", {}) is not None
    assert not await runs.keep_output(other, run.id, "another tenant's")
    assert await runs.keep_output(t, run.id, "streamed before the cancel")
    assert (await runs.get_run(t, run.id)).output == "streamed before the cancel"
    assert not await runs.keep_output(t, run.id, "a second word")  # an output is never replaced
    assert (await runs.get_run(t, run.id)).output == "streamed before the cancel"
    done = make_run(t)
    await runs.create_run(done)
    await runs.finish_run(t, done.id, "succeeded", "run.completed", {}, output="")
    assert not await runs.keep_output(t, done.id, "late")  # ended with its (empty) output stored
    assert not await runs.keep_output(t, "run_missing", "x")


async def test_concurrent_appends_are_gap_free(ctx):
    _, runs, t = ctx
    run = make_run(t)
    await runs.create_run(run)
    writers, per = 8, 15
    barrier = asyncio.Barrier(writers)

    async def writer(w: int) -> list[int]:
        await barrier.wait()
        return [(await runs.append_event(t, run.id, "custom", {"w": w, "i": i})).seq for i in range(per)]

    seqs = [s for chunk in await asyncio.gather(*(writer(w) for w in range(writers))) for s in chunk]
    assert sorted(seqs) == list(range(1, writers * per + 1))
    stored = await runs.events_after(t, run.id, 0, limit=10_000)
    assert [e.seq for e in stored] == list(range(1, writers * per + 1))
    # every writer's own events keep their order
    for w in range(writers):
        assert [e.data["i"] for e in stored if e.data["w"] == w] == list(range(per))


@pytest.mark.timeout(60)
async def test_several_processes_append_gap_free_and_finish_once(ctx):
    """Independent handles on one database (as separate processes have): seqs stay gap-free and of
    several racing finishers exactly one wins. SQLite handles run in real threads, each with its own
    loop (a SQLite call never yields, so only threads can interleave them); PostgreSQL pools stay on
    this loop, where they interleave at every round trip."""
    sql_db, runs, t = ctx
    run = make_run(t)
    await runs.create_run(run)
    handles = [await sql_db.reopen() for _ in range(3)]
    stores = [store(sql_db, "RunStore", h) for h in handles]
    per = 20
    results: list[list[int]] = [[] for _ in stores]
    finished: list[object] = [None] * len(stores)

    async def work(i: int, wait: Callable[[], Awaitable[object]]) -> None:
        await wait()
        for k in range(per):
            results[i].append((await stores[i].append_event(t, run.id, "custom", {"k": k})).seq)
        await wait()
        finished[i] = await stores[i].finish_run(t, run.id, "succeeded", "run.completed", {"by": i})

    try:
        if sql_db.is_pg:
            barrier = asyncio.Barrier(len(stores))
            await asyncio.gather(*(work(i, barrier.wait) for i in range(len(stores))))
        else:
            tbarrier = threading.Barrier(len(stores))

            async def twait() -> None:
                tbarrier.wait(timeout=30)

            await asyncio.gather(*(asyncio.to_thread(asyncio.run, work(i, twait)) for i in range(len(stores))))
    finally:
        for h in handles:
            await h.close()
    all_seqs = sorted(s for r in results for s in r)
    assert all_seqs == list(range(1, len(stores) * per + 1))
    winners = [f for f in finished if f is not None]
    assert len(winners) == 1 and winners[0].seq == len(stores) * per + 1
    events = await runs.events_after(t, run.id, 0, limit=10_000)
    assert [e.type for e in events].count("run.completed") == 1
    assert [e.seq for e in events] == list(range(1, len(stores) * per + 2))


async def test_two_concurrent_finishers_one_terminal_event(ctx):
    _, runs, t = ctx
    for _ in range(5):
        run = make_run(t)
        await runs.create_run(run)
        barrier = asyncio.Barrier(2)

        async def finish(barrier: asyncio.Barrier, run_id: str, status: str, etype: str):
            await barrier.wait()
            return await runs.finish_run(t, run_id, status, etype, {})

        a, b = await asyncio.gather(finish(barrier, run.id, "succeeded", "run.completed"),
                                    finish(barrier, run.id, "canceled", "run.canceled"))
        assert (a is None) != (b is None)
        events = await runs.events_after(t, run.id, 0)
        assert len(events) == 1 and events[0].type in ("run.completed", "run.canceled")
        winner = a or b
        assert (await runs.get_run(t, run.id)).status == ("succeeded" if winner.type == "run.completed" else "canceled")


async def test_conversation_history(ctx):
    _, runs, t = ctx
    r1 = make_run(t, conversation_id="conv", input="hi", created_at=10.0)
    r2 = make_run(t, conversation_id="conv", input="and then?", created_at=20.0)
    r3 = make_run(t, conversation_id="conv", input="third", created_at=30.0)
    r4 = make_run(t, conversation_id="elsewhere", input="x", created_at=15.0)
    for r in (r1, r2, r3, r4):
        await runs.create_run(r)
    await runs.finish_run(t, r1.id, "succeeded", "run.completed", {}, output="hello!")
    await runs.finish_run(t, r2.id, "failed", "run.failed", {})  # no output: only the user turn
    assert await runs.conversation_history(t, "conv", r3.id) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "and then?"},
    ]
    assert await runs.conversation_history(t, "conv", r2.id) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
    ]
    assert await runs.conversation_history(t, "conv", r1.id) == []


async def test_runs_carried_are_seen_and_the_rest_go_quiet(ctx):
    """start_run is a run's first beat; beat_runs marks only runs a worker carries; quiet_runs lists the
    running / waiting_approval runs (any tenant) not marked for quiet_s, never one that was never seen."""
    sql_db, runs, t = ctx
    other = await sql_db.new_tenant()
    carried, dropped, waiting, done, theirs = (make_run(x, status="queued") for x in (t, t, t, t, other))
    queued = make_run(t, status="queued")
    unseen = make_run(t, status="running")  # started before seen_at existed
    for r in (carried, dropped, waiting, done, theirs, queued, unseen):
        await runs.create_run(r)
    for r in (carried, dropped, waiting, done, theirs):
        assert await runs.start_run(r.tenant_id, r.id, worker_id="w1", started_at=1.0) is not None
    await runs.set_status(t, waiting.id, "waiting_approval")
    await runs.finish_run(t, done.id, "failed", "run.failed", {})
    ids = {r.id for r in (carried, dropped, waiting, done, theirs, queued, unseen)}

    async def quiet(quiet_s: float) -> dict[str, float]:
        found = {}
        for run, seen_at in await runs.quiet_runs(quiet_s, limit=100_000):
            if run.id in ids:
                assert run == await runs.get_run_any_tenant(run.id)  # a plain Run; seen_at beside it
                found[run.id] = seen_at
        return found

    first = await quiet(0.0)
    assert set(first) == {carried.id, dropped.id, waiting.id, theirs.id}
    assert await quiet(3600.0) == {}  # all just seen
    await runs.beat_runs([carried.id, waiting.id, theirs.id, done.id, queued.id, "run_unknown"], "w1")
    await runs.beat_runs([], "w1")
    second = await quiet(0.0)
    assert set(second) == set(first)  # an ended or queued run is not made carried by a beat
    assert second[dropped.id] == first[dropped.id]
    assert all(second[i] > first[i] for i in (carried.id, waiting.id, theirs.id))
    assert list(second)[0] == dropped.id  # oldest first
    # last_seen: one run's seen_at (any tenant) while it is carried; None once it ended, if it was never
    # seen, or if there is no such run
    for r in (carried, waiting, theirs, dropped):
        assert await runs.last_seen(r.id) == second[r.id]
    for r in (done, queued, unseen):
        assert await runs.last_seen(r.id) is None
    assert await runs.last_seen("run_unknown") is None


async def test_a_turn_made_by_a_clock_behind_is_still_after_the_turns_before_it(ctx):
    """Session 26: a turn's history is the turns created before it, by ``created_at`` - the clock of the node that
    made each. A turn made by a node whose clock runs behind the previous turn's (another API replica, a clock
    stepped back) got a history without the previous turn. The store now creates a turn after every turn already
    in its conversation; other conversations and runs without one keep their own times."""
    _, runs, t = ctx
    first = make_run(t, conversation_id="skew", input="hi", created_at=1000.0)
    await runs.create_run(first)
    await runs.finish_run(t, first.id, "succeeded", "run.completed", {}, output="hello!")
    behind = make_run(t, conversation_id="skew", input="and then?", created_at=998.5)  # 1.5 s behind
    stored, new = await runs.create_run(behind)
    assert new and stored.id == behind.id and 1000.0 < stored.created_at < 1000.001, stored.created_at
    assert (await runs.get_run(t, behind.id)).created_at == stored.created_at
    assert await runs.conversation_history(t, "skew", behind.id) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]
    third = make_run(t, conversation_id="skew", input="third", created_at=999.0)
    stored3, _ = await runs.create_run(third)
    assert stored3.created_at > stored.created_at
    assert [m["content"] for m in await runs.conversation_history(t, "skew", third.id)] == [
        "hi", "hello!", "and then?"]
    # the first turn's history stays empty: the later turns were created after it, in the store's order
    assert await runs.conversation_history(t, "skew", first.id) == []
    # a clock ahead is kept as it is; other conversations and runs with none are not moved
    ahead, _ = await runs.create_run(make_run(t, conversation_id="skew", input="ahead", created_at=5000.0))
    assert ahead.created_at == 5000.0
    other, _ = await runs.create_run(make_run(t, conversation_id="other", created_at=10.0))
    alone, _ = await runs.create_run(make_run(t, created_at=10.0))
    assert (other.created_at, alone.created_at) == (10.0, 10.0)
    # a replay of an idempotent create hands back the first run as stored
    keyed, _ = await runs.create_run(make_run(t, conversation_id="skew", idempotency_key="k", created_at=1.0))
    again, new = await runs.create_run(make_run(t, conversation_id="skew", idempotency_key="k", created_at=2.0))
    assert not new and again == keyed and keyed.created_at > 5000.0
