"""Walkthrough of run receipts and GET /v1/audit over real HTTP (session 24), on both stacks.

No bug found: these pin what held. A receipt of a run not ended (queued, running, waiting_approval) is
signed with that status and ``ended_at: null`` and verifies offline (``stockade receipt verify``); receipts
of canceled (the interrupted call's ``tool.canceled`` in it), failed and timed-out runs verify; receipt
totals agree with the ledger (deduped, denied and canceled calls cost nothing); another tenant's run is
404, a key bound to a project sees only its project's runs; audit pages and receipts stay contiguous and
verify while two API processes append to the same chain; every read role reads the audit.
Measured (not asserted): 3,000 real echo calls -> a 6,000-span receipt, 2.4 MB, ~0.5 s.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import time

import pytest

from supervisor.audit.receipts import verify_receipt
from supervisor.ids import new_id
from supervisor.stores.records import Run
from tests.e2e.harness import collect, idle_runs, priced_call_in_flight, read_sse, start_node
from tests.e2e.test_governance import plan, setup
from tests.e2e.test_run_pipeline import push, start

pytestmark = pytest.mark.timeout(180)


async def _receipt(c, run_id: str, pem: str) -> dict:
    r = await c.get(f"/v1/runs/{run_id}/receipt")
    assert r.status_code == 200, r.text[:300]
    assert verify_receipt(r.json(), pem)
    return r.json()


def _kinds(body: dict) -> list[str]:
    return [s["kind"] for s in body["spans"]]


async def test_a_receipt_of_a_run_not_ended_says_so_and_verifies_offline(node, tmp_path):
    tid, key = await node.tenant()
    c = node.client(key)
    (run_id,) = await idle_runs(node, tid, 1)
    pem = (await c.get("/v1/receipts/public-key")).text
    empty = await _receipt(c, run_id, pem)
    assert empty["spans"] == [] and empty["status"] == "queued"
    await node.rt.recorder.record(tid, "tool.allowed", run_id=run_id, tool="echo", detail={"verdict": "allow"})
    r = await c.get(f"/v1/runs/{run_id}/receipt")
    body = r.json()
    assert body["status"] == "queued" and body["ended_at"] is None and len(body["spans"]) == 1
    (tmp_path / "r.json").write_bytes(r.content)
    (tmp_path / "k.pem").write_text(pem)
    cli = subprocess.run([sys.executable, "-m", "app.cli", "receipt", "verify", str(tmp_path / "r.json"),
                          "--public-key", str(tmp_path / "k.pem")], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr[-300:]
    out = json.loads(cli.stdout)  # a run not ended yet says so (it printed valid, run_id, spans, key_id only)
    assert (out["valid"], out["run_id"], out["status"], out["ended_at"], out["spans"]) == (True, run_id, "queued", None, 1)


async def test_receipts_of_real_runs_in_each_state(node):
    tid, _, c = await setup(node)
    pem = (await c.get("/v1/receipts/public-key")).text
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 1}}, {"tool": "echo", "args": {"n": 50}}))
    async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
        if e.event == "approval.requested":
            break
    body = await _receipt(c, run["id"], pem)
    assert body["status"] == "waiting_approval" and body["ended_at"] is None
    assert _kinds(body) == ["tool.allowed", "tool.completed"]
    r = await c.post(f"/v1/runs/{run['id']}/cancel")
    assert r.status_code in (200, 202), r.text
    body = await _receipt(c, run["id"], pem)
    assert body["status"] == "canceled" and _kinds(body) == ["tool.allowed", "tool.completed", "tool.canceled"]
    await push(node, tid, "crasher")
    run = await start(c, "crasher", "x")
    await collect(c, run["id"])
    assert (await _receipt(c, run["id"], pem))["status"] == "failed"
    await push(node, tid, "sleeper")  # timeout_s: 2
    run = await start(c, "sleeper", "30")
    await collect(c, run["id"])
    assert (await _receipt(c, run["id"], pem))["status"] == "timed_out"


async def test_a_receipt_of_a_running_run_and_of_a_call_canceled_in_flight(node):
    tid, key = await node.tenant(budget_usd=10)
    c = node.client(key)
    pem = (await c.get("/v1/receipts/public-key")).text
    await push(node, tid, "slowtool")
    run = await priced_call_in_flight(c, "slowtool", "1")
    # the reservation is made just before the call's tool.allowed record is written (a loaded machine showed a
    # receipt between the two): the call's 1 s sleep leaves ample time to see the record land
    for _ in range(200):
        body = await _receipt(c, run["id"], pem)
        if _kinds(body):
            break
        await asyncio.sleep(0.01)
    assert body["status"] == "running" and body["ended_at"] is None and _kinds(body) == ["tool.allowed"]
    await collect(c, run["id"])
    body = await _receipt(c, run["id"], pem)
    assert body["status"] == "succeeded" and body["total_cost_usd"] == 0.001
    run = await priced_call_in_flight(c, "slowtool", "20")
    await c.post(f"/v1/runs/{run['id']}/cancel")
    await collect(c, run["id"])
    body = await _receipt(c, run["id"], pem)
    assert _kinds(body) == ["tool.allowed", "tool.canceled"] and body["total_cost_usd"] == 0
    spent = sum(e["amount_usd"] for e in (await c.get("/v1/ledger")).json()["data"])
    assert spent == pytest.approx(0.001)  # the canceled call charged nothing, in the ledger as in its receipt


async def test_receipt_costs_of_deduped_and_denied_calls_agree_with_the_ledger(node):
    _, _, c = await setup(node)
    pem = (await c.get("/v1/receipts/public-key")).text
    run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 1}, "key": "k1"},
                                        {"tool": "echo", "args": {"n": 1}, "key": "k1"},
                                        {"tool": "echo", "args": {"n": 500}},
                                        {"tool": "echo", "args": {"n": 2}}))
    await collect(c, run["id"])
    body = await _receipt(c, run["id"], pem)
    assert collections.Counter(_kinds(body)) == {"tool.allowed": 2, "tool.completed": 2, "tool.deduped": 1,
                                                 "tool.denied": 1}
    ledger = [e for e in (await c.get("/v1/ledger")).json()["data"] if e["run_id"] == run["id"]]
    assert body["total_cost_usd"] == pytest.approx(sum(e["amount_usd"] for e in ledger)) == pytest.approx(0.002)


async def test_a_receipt_of_3000_records(node):
    tid, key = await node.tenant()
    c = node.client(key)
    (run_id,) = await idle_runs(node, tid, 1)
    for i in range(3000):
        await node.rt.recorder.record(tid, "tool.allowed", run_id=run_id, tool="echo", detail={"i": i})
    body = await _receipt(c, run_id, (await c.get("/v1/receipts/public-key")).text)
    assert [s["seq"] for s in body["spans"]] == list(range(1, 3001))


async def test_another_tenants_run_and_audit_are_not_seen(node):
    tid_a, _ = await node.tenant()
    _, key_b = await node.tenant()
    (run_id,) = await idle_runs(node, tid_a, 1)
    await node.rt.recorder.record(tid_a, "tool.allowed", run_id=run_id, tool="echo")
    b = node.client(key_b)
    r = await b.get(f"/v1/runs/{run_id}/receipt")
    assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
    assert (await b.get(f"/v1/audit?run_id={run_id}")).json() == {"data": [], "next_after": None}


async def test_every_read_role_reads_the_audit_and_a_bound_key_only_its_runs(node):
    tid, key = await node.tenant()
    c = node.client(key)
    ids, projs = {}, {}
    for name in ("p1", "p2"):
        projs[name] = (await node.rt.services.tenants.create_project(tid, name)).id
        run = Run(id=new_id("run_"), tenant_id=tid, bundle="echo", bundle_version="x", input="", status="queued",
                  created_at=time.time(), project_id=projs[name])
        await node.rt.services.runs.create_run(run)
        ids[name] = run.id
        await node.rt.recorder.record(tid, "tool.allowed", run_id=run.id, tool="echo")
    for role in ("member", "approver", "viewer"):
        r = await c.post("/v1/keys", json={"role": role})
        r = await node.client(r.json()["api_key"]).get("/v1/audit")
        assert r.status_code == 200 and r.json()["data"], (role, r.text)
    r = await c.post("/v1/keys", json={"role": "viewer", "project_id": projs["p1"]})
    b = node.client(r.json()["api_key"])
    assert (await b.get(f"/v1/runs/{ids['p2']}/receipt")).status_code == 404
    assert (await b.get(f"/v1/runs/{ids['p1']}/receipt")).status_code == 200
    r = await b.get("/v1/audit")
    assert r.status_code == 403 and r.json()["code"] == "auth.forbidden", r.text
    assert (await b.get(f"/v1/audit?run_id={ids['p2']}")).json() == {"data": [], "next_after": None}
    assert len((await b.get(f"/v1/audit?run_id={ids['p1']}")).json()["data"]) == 1


async def test_audit_pages_and_receipts_while_two_processes_append(node, node_config):
    node2 = await start_node(node_config, workers=False)  # a second API process on the same stores
    tid, key = await node.tenant()
    c, c2 = node.client(key), node2.client(key)
    run_id, other = await idle_runs(node, tid, 2)
    pem = (await c.get("/v1/receipts/public-key")).text
    for _ in range(20):
        await node.rt.recorder.record(tid, "tool.allowed", tool="echo")
    stop = asyncio.Event()

    async def writer(n, rid):
        while not stop.is_set():
            await n.rt.recorder.record(tid, "tool.allowed", run_id=rid, tool="echo", detail={"verdict": "allow"})
            await asyncio.sleep(0)

    w = [asyncio.create_task(writer(n, rid)) for n in (node, node2) for rid in (run_id, other)]
    seen, after = [], 0
    try:
        for i in range(100):
            body = (await (c, c2)[i % 2].get(f"/v1/audit?after={after}&limit=7")).json()
            seen += [d["seq"] for d in body["data"]]
            if body["next_after"] is None:
                break
            after = body["next_after"]
        for i in range(20):
            r = await (c, c2)[i % 2].get(f"/v1/runs/{run_id}/receipt")
            assert r.status_code == 200 and verify_receipt(r.json(), pem), r.text[:300]
            seqs = [s["seq"] for s in r.json()["spans"]]
            assert seqs == sorted(set(seqs)) and r.json()["chain_head"]["seq"] >= (seqs[-1] if seqs else 0)
    finally:
        stop.set()
        await asyncio.gather(*w)
        await node2.stop()
    assert seen == list(range(1, len(seen) + 1))  # no duplicate, no gap across pages
