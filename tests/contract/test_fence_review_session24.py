"""Review of the store-ordered fence (session 24): hold / take_over / beat_runs / quiet_runs on both SQL stores.

1. A takeover under the holder's own id (a worker restarted under the same STOCKADE_WORKER_ID, or one that took
   over the id claim of a worker frozen past it, which then resumes: worker_ids.py) changed nothing in the row:
   ``worker_id`` stayed the holder's, so the resumed holder's ``hold`` still passed (its call went on) and its beat
   still marked the run while the ender ended it. The store now refuses a takeover by the holder's own id, and
   ``lost.take_over`` takes such a run under another name.
2. A sweeper's watch (``AbandonedRuns``) was keyed on ``seen_at`` only, which a takeover leaves as it was: a run
   another ender had just taken over (a redelivery's watch, another node's sweeper) was confirmed as lost all the
   same and taken over again from that ender - two enders each "won" the run. The watch now restarts when the
   run's carrier changes.
The rest pins what holds up: the ``seen_at`` a sweep or a watch reads takes the run over exactly (no float
round-trip drift on either store), ``holder=None`` matches only a run nobody carries, an ended run is not taken.
"""

from __future__ import annotations

import types

import pytest

from supervisor.runs.lost import AbandonedRuns, take_over
from tests.contract._helpers import make_run, store

pytestmark = pytest.mark.timeout(60)


async def _started(runs, t: str, worker_id: str = "w1") -> str:
    run = make_run(t, status="queued")
    await runs.create_run(run)
    assert await runs.start_run(t, run.id, worker_id=worker_id, started_at=1.0) is not None
    return run.id


async def test_the_store_refuses_a_takeover_under_the_holders_own_id(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    run_id = await _started(runs, t)
    watched = await runs.last_seen(run_id)
    # it would leave the run "w1"'s, and the old w1 (resumed) would hold it again while it is ended
    assert await runs.take_over(run_id, "w1", watched, "w1") is False
    assert await runs.hold(run_id, "w1") is True  # nothing was taken: the run is still its holder's
    assert await runs.last_seen(run_id) != watched


async def test_an_ender_with_the_holders_id_still_fences_the_old_holder_out(sql_db):
    """The ender got the frozen worker's id (its claim lapsed in the freeze): its takeover must still make the
    resumed worker's hold fail, and its beats mark the run no more."""
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    run_id = await _started(runs, t)
    watched = await runs.last_seen(run_id)
    run = await runs.get_run_any_tenant(run_id)
    services = types.SimpleNamespace(runs=runs)
    assert await take_over(services, run, watched, "w1") is True
    assert (await runs.get_run_any_tenant(run_id)).worker_id != "w1"
    assert await runs.hold(run_id, "w1") is False  # the resumed holder: its call is refused (run.ended)
    await runs.beat_runs([run_id], "w1")
    assert await runs.last_seen(run_id) == watched  # nor marked by its beat
    # the ender crashed before ending it: the next ender (the same id again) takes it from that one
    taken = await runs.get_run_any_tenant(run_id)
    assert await take_over(services, taken, watched, "w1") is True
    assert await runs.hold(run_id, "w1") is False
    taken = await runs.get_run_any_tenant(run_id)  # and once more: the run never becomes w1's again
    assert await take_over(services, taken, watched, "w1") is True
    assert await runs.hold(run_id, "w1") is False


async def test_a_sweeper_leaves_a_run_another_ender_took_over_during_its_watch(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    run_id = await _started(runs, t)
    now = [0.0]
    sweeper = AbandonedRuns(runs, visibility_s=5.0, clock=lambda: now[0])
    sweeper.quiet_s = 0.0  # the store-side filter passes at once; the watch is what is tested
    assert run_id not in {r.id for r, _ in await sweeper.confirmed()}  # first sight: the watch starts
    watched = await runs.last_seen(run_id)
    assert await runs.take_over(run_id, "w1", watched, "w2") is True  # a redelivery's watch took it, ending it
    now[0] = 10.0
    gone = {r.id: (r, s) for r, s in await sweeper.confirmed()}
    assert run_id not in gone, "a run another ender had just taken over was confirmed lost again"
    now[0] = 20.0  # that ender never ended it (it crashed): the watch of the run as w2's completes
    gone = {r.id: (r, s) for r, s in await sweeper.confirmed()}
    assert run_id in gone and gone[run_id][0].worker_id == "w2"
    services = types.SimpleNamespace(runs=runs)
    assert await take_over(services, gone[run_id][0], gone[run_id][1], "w3") is True


async def test_the_seen_at_a_sweep_or_a_watch_reads_takes_the_run_over_exactly(sql_db):
    """No float round-trip drift: the value quiet_runs / last_seen hand back compares equal in take_over, after
    start_run, a beat, and a hold (each written by the store's own clock expression)."""
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    for mark in ("start", "beat", "hold"):
        run_id = await _started(runs, t)
        if mark == "beat":
            await runs.beat_runs([run_id], "w1")
        elif mark == "hold":
            assert await runs.hold(run_id, "w1") is True
        swept = {r.id: s for r, s in await runs.quiet_runs(-1000.0, limit=100_000)}  # every carried run (a future cutoff)
        assert swept[run_id] == await runs.last_seen(run_id)
        assert isinstance(swept[run_id], float)
        assert await runs.take_over(run_id, "w1", swept[run_id], "w2") is True, mark


async def test_a_takeover_naming_no_holder_matches_only_a_run_nobody_carries(sql_db):
    runs = store(sql_db, "RunStore")
    t = await sql_db.new_tenant()
    run_id = await _started(runs, t)
    watched = await runs.last_seen(run_id)
    assert await runs.take_over(run_id, None, watched, "w2") is False
    assert (await runs.get_run_any_tenant(run_id)).worker_id == "w1"
    await runs.finish_run(t, run_id, "succeeded", "run.completed", {})
    assert await runs.take_over(run_id, "w1", watched, "w2") is False  # an ended run is not taken
    assert (await runs.get_run_any_tenant(run_id)).worker_id == "w1"
