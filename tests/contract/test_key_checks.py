"""Open streams' key re-checks share one store lookup per key (supervisor.key_checks), on both SQL stores.

The store is real; a thin wrapper counts its ``find_key`` calls and, where a test needs a lookup to be
in flight, holds it at a gate (an event, not a sleep). The clock is a variable the test moves.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from supervisor.errors import StockadeError
from supervisor.key_checks import KeyChecks

pytestmark = pytest.mark.timeout(30)


class Counted:
    """The real tenant store, with its ``find_key`` calls counted and optionally held at a gate."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail: StockadeError | None = None

    async def find_key(self, key_hash: str) -> Any:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return await self.store.find_key(key_hash)


async def _key(sql_db) -> tuple[Any, str, str, str]:
    store = sql_db.tenant_store()
    tid = await sql_db.new_tenant()
    key_hash = secrets.token_hex(32)
    key = await store.create_key(tid, key_id="key_" + secrets.token_hex(8), key_hash=key_hash, prefix="sk_x",
                                 role="viewer")
    return store, tid, key.id, key_hash


async def test_concurrent_checks_of_one_key_share_one_lookup(sql_db):
    store, _, key_id, key_hash = await _key(sql_db)
    counted, now = Counted(store), [100.0]
    checks = KeyChecks(clock=lambda: now[0])
    counted.gate = asyncio.Event()
    waiters = [asyncio.create_task(checks.find(counted, key_hash, 1.0)) for _ in range(50)]
    await counted.entered.wait()
    await asyncio.sleep(0)  # let every waiter reach the shared lookup
    counted.gate.set()
    keys = await asyncio.gather(*waiters)
    assert counted.calls == 1 and {k.id for k in keys} == {key_id}
    # within max_age of that lookup's start: no new lookup; past it: one more
    now[0] += 1.0
    assert (await checks.find(counted, key_hash, 1.0)).id == key_id and counted.calls == 1
    now[0] += 0.01
    assert (await checks.find(counted, key_hash, 1.0)).id == key_id and counted.calls == 2


async def test_a_revocation_is_seen_once_the_shared_result_is_older_than_max_age(sql_db):
    store, tid, key_id, key_hash = await _key(sql_db)
    counted, now = Counted(store), [0.0]
    checks = KeyChecks(clock=lambda: now[0])
    assert (await checks.find(counted, key_hash, 0.5)).revoked_at is None
    assert await store.revoke_key(tid, key_id)
    now[0] += 0.4
    assert (await checks.find(counted, key_hash, 0.5)).revoked_at is None  # the bounded staleness
    now[0] += 0.2
    assert (await checks.find(counted, key_hash, 0.5)).revoked_at is not None


async def test_a_lookup_in_flight_for_longer_than_max_age_is_not_joined(sql_db):
    # it started before a revocation that a newer check must see: the newer check makes its own lookup
    store, tid, key_id, key_hash = await _key(sql_db)
    counted, now = Counted(store), [0.0]
    checks = KeyChecks(clock=lambda: now[0])
    counted.gate = asyncio.Event()
    slow = asyncio.create_task(checks.find(counted, key_hash, 0.5))
    await counted.entered.wait()
    now[0] += 1.0
    assert await store.revoke_key(tid, key_id)
    counted.gate.set()
    fresh = await checks.find(counted, key_hash, 0.5)
    assert fresh.revoked_at is not None and counted.calls == 2
    assert (await slow) is not None
    # the slow, older result landing later does not replace the newer one
    assert (await checks.find(counted, key_hash, 0.5)).revoked_at is not None and counted.calls == 2


async def test_a_failed_lookup_reaches_every_waiter_and_is_not_kept(sql_db):
    store, _, key_id, key_hash = await _key(sql_db)
    counted, now = Counted(store), [0.0]
    checks = KeyChecks(clock=lambda: now[0])
    counted.gate, counted.fail = asyncio.Event(), StockadeError("store.unavailable", "down")
    waiters = [asyncio.create_task(checks.find(counted, key_hash, 1.0)) for _ in range(5)]
    await counted.entered.wait()
    await asyncio.sleep(0)
    counted.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, StockadeError) and r.code == "store.unavailable" for r in results)
    counted.fail, counted.gate = None, None
    assert (await checks.find(counted, key_hash, 1.0)).id == key_id and counted.calls == 2  # looked up again


async def test_a_canceled_waiter_does_not_cancel_the_others_lookup(sql_db):
    store, _, key_id, key_hash = await _key(sql_db)
    counted = Counted(store)
    checks = KeyChecks()
    counted.gate = asyncio.Event()
    first = asyncio.create_task(checks.find(counted, key_hash, 5.0))
    await counted.entered.wait()
    second = asyncio.create_task(checks.find(counted, key_hash, 5.0))
    await asyncio.sleep(0)
    first.cancel()
    counted.gate.set()
    assert (await second).id == key_id and counted.calls == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_unknown_key_is_none_and_the_table_stays_bounded(sql_db):
    store = sql_db.tenant_store()
    now = [0.0]
    checks = KeyChecks(clock=lambda: now[0])
    for i in range(5000):
        now[0] += 0.1
        assert await checks.find(store, f"{i:064x}", 1.0) is None
    assert len(checks._done) <= 4097
