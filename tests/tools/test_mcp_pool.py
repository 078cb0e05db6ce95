"""The MCP client pool's lifecycle rules, with a counting context manager standing in for the SDK client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from supervisor.tools.mcp._pool import ClientPool

pytestmark = pytest.mark.timeout(10)


class Opens:
    def __init__(self, fail: int = 0) -> None:
        self.entered = 0
        self.exited = 0
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def opener(self) -> Any:
        @asynccontextmanager
        async def factory() -> AsyncIterator[object]:
            await self.gate.wait()
            if self.fail:
                self.fail -= 1
                raise ConnectionError("refused")
            self.entered += 1
            try:
                yield object()
            finally:
                self.exited += 1

        return factory


async def _closed(entry: Any) -> None:
    """Wait for an entry's owner task to close its client (no sleeps: the task itself is awaited)."""
    await asyncio.wait_for(asyncio.shield(entry.task), 2)


async def test_concurrent_leases_share_one_open_client():
    pool, opens = ClientPool(), Opens()
    opens.gate.clear()
    got: list[object] = []

    async def use() -> None:
        async with pool.lease(("t", "s"), opens.opener) as c:
            got.append(c)

    tasks = [asyncio.create_task(use()) for _ in range(5)]
    await asyncio.sleep(0)
    opens.gate.set()
    await asyncio.gather(*tasks)
    assert opens.entered == 1 and len({id(c) for c in got}) == 1
    await pool.close()
    assert opens.exited == 1


async def test_failed_open_reaches_callers_and_the_next_lease_retries():
    pool, opens = ClientPool(), Opens(fail=1)
    with pytest.raises(ConnectionError):
        async with pool.lease(("t", "s"), opens.opener):
            pass
    async with pool.lease(("t", "s"), opens.opener) as c:
        assert c is not None
    assert opens.entered == 1
    await pool.close()


async def test_discard_waits_for_users_then_closes():
    pool, opens = ClientPool(), Opens()
    async with pool.lease(("t", "s"), opens.opener):
        entry = pool._entries[("t", "s")]
        pool.discard(("t", "s"))
        assert not entry.stop.is_set() and opens.exited == 0  # still in use: not told to close
    await _closed(entry)
    assert opens.exited == 1
    async with pool.lease(("t", "s"), opens.opener):
        assert opens.entered == 2  # a new client for the next caller
    await pool.close()


async def test_idle_clients_close_and_the_cap_holds():
    pool, opens = ClientPool(idle_s=0.0, max_entries=2), Opens()
    async with pool.lease(("t", "a"), opens.opener):
        a = pool._entries[("t", "a")]
    async with pool.lease(("t", "b"), opens.opener):  # sweeps "a": idle longer than 0 s
        pass
    await _closed(a)
    assert opens.exited == 1
    capped, opens2 = ClientPool(max_entries=2), Opens()
    for name in "abc":
        async with capped.lease(("t", name), opens2.opener):
            if name == "a":
                first = capped._entries[("t", "a")]
    await _closed(first)
    assert len(capped._entries) == 2 and opens2.exited == 1
    await pool.close()
    await capped.close()
    assert opens.exited == opens.entered and opens2.exited == opens2.entered
