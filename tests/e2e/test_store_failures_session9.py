"""Store failures the outage attacks (test_attack_outages_session9.py) pointed at, both stacks:

- one failing sweep step no longer holds the others back. The sweeper ran its steps in one ``try``: the
  ledger's sweep failing (``ledger.unavailable``) or the queue's (Redis away) skipped every later step -
  approvals past due stayed pending, orphaned sandboxes lived on. Each step now runs on its own; only the
  queue's two steps stay together (a run counts as abandoned only after consecutive sweeps that saw the
  whole queue);
- a run whose events cannot be stored fails with the store's code, not ``sandbox.crashed``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from supervisor.errors import StockadeError
from tests.contract.test_approval_store import make

pytestmark = pytest.mark.timeout(60)


async def test_a_failing_sweep_step_does_not_hold_back_the_others(node, monkeypatch):
    async def down(*a, **k):
        raise StockadeError("ledger.unavailable", "the ledger is away")

    monkeypatch.setattr(node.rt.services.ledger, "sweep", down)
    monkeypatch.setattr(node.rt, "requeue_orphans", down)
    tid, _ = await node.tenant()
    approvals = node.rt.services.approvals
    due = await approvals.create(make(tid, ttl=1, created_at=time.time() - 100))
    async with asyncio.timeout(20):  # the harness sweeps every 0.5 s
        while (await approvals.get(tid, due.id)).status == "pending":  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert (await approvals.get(tid, due.id)).status == "expired"


async def test_a_run_whose_events_cannot_be_stored_fails_with_the_stores_code(node, monkeypatch):
    """The store going away while a bundle's own event is stored ended the session, the sandbox then
    exited without a done frame, and the run failed ``sandbox.crashed`` - blaming the bundle. It now
    fails ``store.unavailable``."""
    from supervisor.events import RunEmitter
    from tests.e2e.test_attack_sdk_ending_session8 import _failed, run_bundles

    real = RunEmitter.emit

    async def emit(self, type, data):
        if type == "custom" and data.get("boom"):
            raise StockadeError("store.unavailable", "SQLite store unavailable: disk I/O error")
        return await real(self, type, data)

    monkeypatch.setattr(RunEmitter, "emit", emit)
    got = await run_bundles(node, {"store-cut": """
        async def main(ctx):
            await ctx.emit("custom", boom=True)
            await ctx.answer("never stored")
    """})
    data = _failed(got["store-cut"][0])
    assert data["code"] == "store.unavailable", data
    assert "disk I/O" not in data["message"], data  # the operator's detail stays in the log
