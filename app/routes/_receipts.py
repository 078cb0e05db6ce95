"""Receipts of big runs: read, checked, built, signed and encoded without freezing the event loop, a few at a time.

A run's calls are bounded only by its timeout and rate limits: tens of thousands of cheap ``echo`` calls make
a receipt of tens of MB of JSON. Built on the event loop (as before session 25) a 20,000-call receipt stood
the whole API node still for ~1.6 s - every tenant's streams, Socket.IO, requests and, on ``stockade
serve``, its worker's governed calls. Now the run's records are read a page at a time and each page is
turned into its spans' JSON in a thread, then dropped (``ReceiptSpans``: only bytes are kept, so the garbage
collector has no big heap to walk); the chain check hashes each page in a thread (check_window), and signing
and encoding run in a thread too. The body is the bytes FastAPI made of the returned dict before, so
clients parse the same object and the signature covers the same canonical bytes.

``ReceiptSlots``: each receipt of a big run (``SLOT_FROM`` records or more; smaller ones cost little and take
no slot, so a backend fetching many ordinary receipts at once is not refused) holds all its JSON in memory and a
share of the node's CPU, so a process builds at most ``BUILDS`` of them at once; a request that finds them all taken waits
for one (receipts are reads a client simply waits for) at most ``WAIT_S``, then ``rate.limited`` (429,
retryable, Retry-After). One tenant has at most ``PER_TENANT`` receipts in progress (built or waiting) on a
process: one more is ``rate.limited`` at once, so that a tenant asking for many cannot queue up ahead of the
others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from supervisor.audit.receipts import ReceiptSpans, check_window, next_page
from supervisor.errors import StockadeError
from supervisor.stores.records import Run

__all__ = ["BUILDS", "PER_TENANT", "SLOT_FROM", "WAIT_S", "ReceiptSlots", "signed_receipt_bytes"]

BUILDS = 2  # receipts built at once per process: their threads share its cores with everything else
PER_TENANT = 2  # receipts of one tenant in progress (building or waiting) per process
WAIT_S = 10.0  # the longest a receipt waits for a free build slot before rate.limited
PAGE = 500  # records of the run per read
SLOT_FROM = PAGE  # records of a run whose receipt takes a build slot (a full first page)


class ReceiptSlots:
    def __init__(self, builds: int = BUILDS, per_tenant: int = PER_TENANT, wait_s: float = WAIT_S) -> None:
        self.builds, self.per_tenant, self.wait_s = builds, per_tenant, wait_s
        self._sem = asyncio.Semaphore(builds)
        self._tenants: dict[str, int] = {}
        self.building = 0  # receipts in the making now (metrics, tests)

    def held(self, tenant_id: str) -> int:
        """The tenant's receipts in progress here (building or waiting)."""
        return self._tenants.get(tenant_id, 0)

    @contextlib.asynccontextmanager
    async def slot(self, tenant_id: str) -> AsyncIterator[None]:
        if self._tenants.get(tenant_id, 0) >= self.per_tenant:
            raise StockadeError("rate.limited", f"at most {self.per_tenant} receipts of a tenant at once on a node; "
                                                "retry when one is done", retry_after=1)
        self._tenants[tenant_id] = self._tenants.get(tenant_id, 0) + 1
        try:
            try:
                await asyncio.wait_for(self._sem.acquire(), self.wait_s)
            except TimeoutError:
                raise StockadeError("rate.limited", "this node is building other receipts; retry shortly",
                                    retry_after=1) from None
            self.building += 1
            try:
                yield
            finally:
                self.building -= 1
                self._sem.release()
        finally:
            left = self._tenants[tenant_id] - 1
            if left:
                self._tenants[tenant_id] = left
            else:
                del self._tenants[tenant_id]


async def signed_receipt_bytes(rt: Any, tenant_id: str, run: Run) -> bytes:
    """Read the run's records a page at a time, check the chain, sign: the receipt's JSON bytes."""
    page = await rt.services.audit.list(tenant_id, limit=PAGE, run_id=run.id)
    async with contextlib.AsyncExitStack() as stack:
        if len(page) >= SLOT_FROM:  # a big run: one of a few built at once (ReceiptSlots)
            await stack.enter_async_context(rt.receipt_slots.slot(tenant_id))
        return await _build(rt, tenant_id, run, page)


async def _build(rt: Any, tenant_id: str, run: Run, page: list[Any]) -> bytes:
    audit, spans = rt.services.audit, ReceiptSpans()
    while True:
        # each page encoded in a thread and kept as bytes, the next one read meanwhile; the thread also lets
        # the loop run after a store that answered without suspending (the embedded SQLite store)
        adding = asyncio.ensure_future(asyncio.to_thread(spans.add, page))
        nxt = await next_page(audit, tenant_id, page, adding, run.id, PAGE) if len(page) == PAGE else None
        await adding
        if nxt is None:
            break
        page = nxt
    head = await audit.head(tenant_id)
    await check_window(audit, tenant_id, spans.window, head, rt.sealer)  # else audit.corrupt, nothing signed
    if rt.signing_watch is not None:  # its key still the deployment's, else receipt.foreign_key (signing_watch.py)
        await rt.signing_watch.may_sign()
    return await asyncio.to_thread(spans.signed_json, run, head, rt.signing_key)
