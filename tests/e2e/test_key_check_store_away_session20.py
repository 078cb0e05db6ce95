"""A PostgreSQL outage shorter than app.deps.STORE_AWAY_GRACE_S does not end open streams (session 20).

Found by a streams walkthrough: an open stream's key re-check (every 4 s) took the store's own
``store.unavailable`` as a failed key, so any outage longer than about 4 s closed every SSE stream and
disconnected every Socket.IO client on every replica - the events still flowing through Redis, and the
docstring promising the opposite. Socket.IO clients do not reconnect by themselves after a server-side
disconnect. Now the re-check waits out the store for up to the grace, then fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import app.deps
from supervisor.events import finish_run_anywhere
from tests.e2e import test_attack_outages_session9 as _outages
from tests.e2e.harness import idle_runs, start_node
from tests.e2e.outages import pg_outage

# a production node on its own database and its own Redis: the outage suite's fixtures
outage_settings, redis_server = _outages.outage_settings, _outages.redis_server
_read_lines = _outages._read_lines

pytestmark = pytest.mark.timeout(90)


async def _open_stream(node):
    tid, key = await node.tenant()
    c = node.client(key)
    [run_id] = await idle_runs(node, tid, 1)
    lines: list[str] = []
    seen = asyncio.Event()
    reader = asyncio.create_task(_read_lines(c, run_id, lines, seen))
    await asyncio.wait_for(seen.wait(), 20)
    return tid, run_id, lines, reader


async def test_a_short_store_outage_leaves_the_stream_open(outage_settings, monkeypatch):
    monkeypatch.setattr(app.deps, "KEY_RECHECK_S", 0.1)  # several re-checks inside the outage
    node = await start_node(outage_settings, workers=False)
    try:
        tid, run_id, lines, reader = await _open_stream(node)
        async with pg_outage(outage_settings.database_url):
            await asyncio.sleep(1.5)  # ~19 re-checks, each answered store.unavailable
            assert not reader.done(), lines[-4:]
        s = node.rt.services
        for _ in range(50):  # a pooled connection cut by the outage may fail once
            with contextlib.suppress(Exception):
                await finish_run_anywhere(s.runs, s.events, tid, run_id, "canceled", {"code": "run.canceled"})
                break
            await asyncio.sleep(0.1)
        await asyncio.wait_for(reader, 20)
        assert "event: run.canceled" in lines, lines[-6:]
    finally:
        await node.stop()


async def test_a_store_away_past_the_grace_closes_the_stream(outage_settings, monkeypatch):
    monkeypatch.setattr(app.deps, "KEY_RECHECK_S", 0.1)
    monkeypatch.setattr(app.deps, "STORE_AWAY_GRACE_S", 0.5)
    node = await start_node(outage_settings, workers=False)
    try:
        _, _, lines, reader = await _open_stream(node)
        async with pg_outage(outage_settings.database_url):
            await asyncio.wait_for(reader, 20)  # fails closed: a revocation elsewhere could go unseen
        assert lines[-2:] == [": store.unavailable: stream closed", ""], lines[-4:]
    finally:
        await node.stop()
