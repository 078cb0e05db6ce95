"""Receipts of big runs (session 25), on both stacks.

Found: ``GET /v1/runs/{id}/receipt`` checked the chain, built, signed and encoded a receipt on the event
loop: a run of 20,000 echo calls (40,000 records, a 13.5 MB receipt) stood the whole node still for ~1.6 s
(embedded; the SQLite store also reads without suspending) - every tenant's streams, requests and the
worker's governed calls - and a tenant could ask for any number of them at once. Now the hashing, encoding
and signing run in threads a page at a time (app/routes/_receipts.py), a process builds at most two at once
(a tenant at most two in progress; more wait, then ``rate.limited``), and the body is the same bytes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from pydantic import TypeAdapter

import supervisor.audit.chain as chain_mod
import supervisor.audit.receipts as receipts_mod
from supervisor.audit.receipts import build_receipt, load_receipt, sign_receipt, verify_receipt
from tests.e2e.harness import idle_runs, until

pytestmark = [pytest.mark.timeout(300)]

_API_JSON = TypeAdapter(dict[str, Any])  # what FastAPI made of the route's returned dict before session 25


async def _calls(node, tid: str, run_id: str, n: int, detail: Any = None) -> None:
    rec = node.rt.recorder
    for i in range(n):
        await rec.record(tid, "tool.allowed", run_id=run_id, tool="echo", args_hash=f"{i:064x}", rule_id="echo",
                         policy_version="v1", cost_micro=1000, detail=detail or {"verdict": "allow"})
        await rec.record(tid, "tool.completed", run_id=run_id, tool="echo", args_hash=f"{i:064x}", rule_id="echo",
                         policy_version="v1", cost_micro=1000, detail={"verdict": "allow", "duration_ms": 0.4 + i})


async def _old_receipt_bytes(node, tid: str, run_id: str) -> bytes:
    """The receipt as the route made it before session 25: the records, the dict, FastAPI's JSON of it."""
    audit = node.rt.services.audit
    records, after = [], 0
    while page := await audit.list(tid, after_seq=after, limit=500, run_id=run_id):
        records.extend(page)
        after = page[-1].seq
    run = await node.rt.services.runs.get_run(tid, run_id)
    head = await audit.head(tid)
    return _API_JSON.dump_json(_API_JSON.validate_python(sign_receipt(build_receipt(run, records, head),
                                                                      node.rt.signing_key)))


async def test_a_receipt_is_the_same_bytes_as_before_and_verifies(node):
    tid, key = await node.tenant()
    c = node.client(key)
    pem = (await c.get("/v1/receipts/public-key")).text
    run_ids = await idle_runs(node, tid, 3)
    # an empty receipt; one of a page and a bit (slices and pages split mid-way); odd values
    await _calls(node, tid, run_ids[1], 603)
    await node.rt.recorder.record(tid, "tool.denied", run_id=run_ids[1], tool="echo ✓ \u2028", code="policy.denied",
                                  detail={"verdict": "deny", "duration_ms": 1e-7})
    await node.rt.recorder.record(tid, "tool.allowed", run_id=run_ids[2], tool="echo", detail=None)
    await node.rt.recorder.record(tid, "tool.completed", run_id=run_ids[2], tool="echo", cost_micro=7,
                                  detail={"verdict": "allow", "duration_ms": 12345678901234567890})
    for run_id in run_ids:
        r = await c.get(f"/v1/runs/{run_id}/receipt")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text[:300]
        assert r.content == await _old_receipt_bytes(node, tid, run_id)  # Ed25519 signs deterministically
        body = load_receipt(r.content)
        assert verify_receipt(body, pem) and body == r.json()
    assert len(load_receipt(r.content)["spans"]) == 2  # the last one
    # the OpenAPI document still says the receipt is a JSON object
    schema = (await c.get("/openapi.json")).json()["paths"]["/v1/runs/{run_id}/receipt"]["get"]
    assert schema["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "object"


async def test_a_big_receipt_is_built_off_the_event_loop(node, monkeypatch):
    """10,000 calls (20,000 records): every canonical encoding and chain check of the receipt runs off the
    loop's thread, and the loop never stands still long meanwhile (old code: ~0.8 s embedded)."""
    tid, key = await node.tenant()
    c = node.client(key)
    pem = (await c.get("/v1/receipts/public-key")).text
    (run_id,) = await idle_runs(node, tid, 1)
    await _calls(node, tid, run_id, 10_000)
    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    asking = threading.Event()  # while the receipt is asked for (the test's own verify_receipt is on the loop)

    def watch(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **kw: Any) -> Any:
            if asking.is_set() and threading.get_ident() == loop_thread:
                on_loop.append(name)
            return fn(*a, **kw)
        return wrapped

    monkeypatch.setattr(receipts_mod, "canonical", watch("canonical", receipts_mod.canonical))
    monkeypatch.setattr(chain_mod.ChainVerifier, "feed", watch("feed", chain_mod.ChainVerifier.feed))
    stop, worst = asyncio.Event(), [0.0]

    async def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            worst[0] = max(worst[0], time.perf_counter() - t - 0.005)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    asking.set()
    r = await c.get(f"/v1/runs/{run_id}/receipt")
    asking.clear()
    took = time.perf_counter() - t0
    stop.set()
    await task
    assert r.status_code == 200, r.text[:300]
    body = load_receipt(r.content)
    assert len(body["spans"]) == 20_000 and verify_receipt(body, pem)
    print(f"receipt {took:.3f} s, longest loop stall {worst[0]:.3f} s")
    assert on_loop == [], sorted(set(on_loop))
    # a full garbage collection stops the loop too (~50-100 ms on a loaded 2-core machine), whoever allocates
    assert worst[0] < 0.5, f"the loop stood still {worst[0]:.3f} s of the receipt's {took:.3f} s"


async def test_receipts_built_at_once_are_bounded(node, monkeypatch):
    import app.routes._receipts as receipt_routes
    from app.routes._receipts import ReceiptSlots

    tid_a, key_a = await node.tenant()
    tid_b, key_b = await node.tenant()
    a, b = node.client(key_a), node.client(key_b)
    runs_a = await idle_runs(node, tid_a, 3)
    (run_b,) = await idle_runs(node, tid_b, 1)
    for run_id in runs_a:
        await _calls(node, tid_a, run_id, 2)
    await _calls(node, tid_b, run_b, 2)
    # receipts of small runs take no slot: with none to be had, they are still answered
    node.rt.receipt_slots = ReceiptSlots(builds=1, per_tenant=0, wait_s=0.01)
    r = await a.get(f"/v1/runs/{runs_a[0]}/receipt")
    assert r.status_code == 200 and len(r.json()["spans"]) == 4, r.text[:300]
    monkeypatch.setattr(receipt_routes, "SLOT_FROM", 1)  # these runs of 4 records count as big from here on
    slots = node.rt.receipt_slots = ReceiptSlots(builds=2, per_tenant=2, wait_s=60)
    release, entered, loop = threading.Event(), [], asyncio.get_running_loop()
    both_in = asyncio.Event()
    signed_json = receipts_mod.ReceiptSpans.signed_json

    def held(self: Any, *a: Any) -> bytes:  # runs in a thread: holds its build slot until released
        entered.append(1)
        if len(entered) == 2:
            loop.call_soon_threadsafe(both_in.set)
        assert release.wait(60)
        return signed_json(self, *a)

    monkeypatch.setattr(receipts_mod.ReceiptSpans, "signed_json", held)
    first = [asyncio.create_task(a.get(f"/v1/runs/{r}/receipt")) for r in runs_a[:2]]
    try:
        await asyncio.wait_for(both_in.wait(), 30)
        # a third receipt of the same tenant: refused at once, retryable
        r = await a.get(f"/v1/runs/{runs_a[2]}/receipt")
        assert r.status_code == 429 and r.json()["code"] == "rate.limited" and r.headers["Retry-After"] == "1", r.text
        # another tenant's waits for a slot (both taken), and gets its receipt when one is free
        other = asyncio.create_task(b.get(f"/v1/runs/{run_b}/receipt"))
        await until(lambda: slots.held(tid_b) == 1, 10)
        assert not other.done() and slots.building == 2
    finally:
        release.set()
    for r in [*(await asyncio.gather(*first)), await other]:
        assert r.status_code == 200 and len(r.json()["spans"]) == 4, r.text[:300]
    assert (slots.building, slots.held(tid_a), slots.held(tid_b)) == (0, 0, 0)
    # a receipt that waits longer than the slots allow: rate.limited, its slot count given back
    slots = node.rt.receipt_slots = ReceiptSlots(builds=1, per_tenant=2, wait_s=0.2)
    release.clear()
    entered.clear()
    both_in.clear()
    held_one = asyncio.create_task(a.get(f"/v1/runs/{runs_a[0]}/receipt"))
    try:
        await until(lambda: slots.building == 1, 10)
        r = await b.get(f"/v1/runs/{run_b}/receipt")
        assert r.status_code == 429 and r.json()["code"] == "rate.limited", r.text
        assert slots.held(tid_b) == 0
    finally:
        release.set()
    assert (await held_one).status_code == 200
