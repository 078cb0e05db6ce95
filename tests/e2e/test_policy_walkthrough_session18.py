"""What a walkthrough of the policy engine and approvals found (session 18), through a whole node on both stacks.

A tenant policy stored by PUT /v1/policy (checked as YAML 1.2) was enforced as YAML 1.1: ``eq: 1e3`` never
matched 1000 and ``prices: {echo: 1e-3}`` made every call of the tenant policy.unavailable. A downgrade whose
downgraded call needs a human was refused policy.unavailable (the verdict lost the rule's approval terms). A
bundle that let go of a call waiting for approval left its run ``waiting_approval`` and the request's end off
the stream. A call whose run was canceled while it waited was sometimes audited as an approval that expired
without a decision.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from supervisor.audit.receipts import verify_receipt
from supervisor.chain.approval import RUN_ENDED
from tests.e2e.harness import collect
from tests.e2e.test_run_pipeline import TEST_BUNDLES, start

pytestmark = pytest.mark.timeout(120)
YAML = {"Content-Type": "application/yaml"}


async def _tenant(node):
    tid, key = await node.tenant()
    await node.rt.registry.register_dir(TEST_BUNDLES / "caller", tid)
    return tid, key, node.client(key)


async def _put(c, text: str) -> str:
    r = await c.put("/v1/policy", content=text, headers=YAML)
    assert r.status_code == 200, r.text
    return r.json()["version"]


async def _pending(c, run_id: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = (await c.get("/v1/approvals", params={"status": "pending", "run_id": run_id})).json()["data"]
        if got:
            return got[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no pending approval")


async def _status(c, run_id: str, want: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (status := (await c.get(f"/v1/runs/{run_id}")).json()["status"]) != want:
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)


async def test_a_stored_policy_is_enforced_as_it_was_checked(node):
    _, key, c = await _tenant(node)
    version = await _put(c, "version: 1\nrules:\n"
                            "  - {id: no-1000, tool: echo, when: {args.n: {eq: 1e3}}, verdict: deny}\n"
                            "  - {id: allow, tool: '*', verdict: allow}\nprices: {echo: 1e-3}\n")
    run = await start(c, "caller", json.dumps({"calls": [{"tool": "echo", "args": {"n": 1000}},
                                                         {"tool": "echo", "args": {"n": 1}}]}))
    events = await collect(c, run["id"])
    results = next(e for e in events if e.event == "custom").data["data"]
    assert results[0]["error"] == "policy.denied" and results[0]["extra"]["rule_id"] == "no-1000", results
    assert results[1] == {"ok": {"n": 1}}
    assert [e.data["cost_usd"] for e in events if e.event == "tool.result"] == [0.0, 0.001]
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    assert {a["policy_version"] for a in audit} == {version}, audit


async def test_a_downgraded_call_that_needs_a_human_waits_for_one(node):
    _, key, c = await _tenant(node)
    await _put(c, "version: 1\nrules:\n"
                  "  - {id: shrink, tool: echo, when: {args.n: {gt: 100}}, verdict: downgrade, downgrade: {args.n: 50}}\n"
                  "  - {id: big-needs-human, tool: echo, when: {args.n: {gt: 10}}, verdict: require_approval,"
                  " approval: {approvers: 1}}\n"
                  "  - {id: echo, tool: echo, verdict: allow}\n")
    run = await start(c, "caller", json.dumps({"calls": [{"tool": "echo", "args": {"n": 500}}]}))
    pending = await _pending(c, run["id"])
    assert pending["args"] == {"n": 50} and pending["rule_id"] == "big-needs-human", pending
    r = await c.post(f"/v1/approvals/{pending['id']}/decision", json={"decision": "approve"})
    assert r.status_code == 200, r.text
    events = await collect(c, run["id"])
    assert next(e for e in events if e.event == "custom").data["data"] == [{"ok": {"n": 50}}]


LETS_GO = """
import asyncio
from stockade_sdk import ToolError


async def main(ctx):
    try:
        await asyncio.wait_for(ctx.call("echo", n=50), 1.0)
    except asyncio.TimeoutError:
        await ctx.emit("custom", name="gave-up", data={})
    await asyncio.sleep(float(ctx.input))
    await ctx.answer("done")
"""


async def test_a_call_the_bundle_lets_go_of_while_waiting_leaves_the_run_running(node, tmp_path):
    tid, key = await node.tenant()
    c = node.client(key)
    await _put(c, "version: 1\nrules:\n  - {id: human, tool: echo, verdict: require_approval}\n")
    bundle = tmp_path / "lets-go"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text('name: lets-go\nversion: "1"\ntools: [echo]\n')
    (bundle / "main.py").write_text(LETS_GO)
    await node.rt.registry.register_dir(bundle, tid)
    run = await start(c, "lets-go", "30")
    pending = await _pending(c, run["id"])
    await _status(c, run["id"], "running")  # was: waiting_approval while the bundle went on
    assert (await c.get(f"/v1/approvals/{pending['id']}")).json()["status"] == "expired"
    await c.post(f"/v1/runs/{run['id']}/cancel")
    events = await collect(c, run["id"])
    kinds = [e.event for e in events]
    resolved = [e.data for e in events if e.event == "approval.resolved"]
    assert resolved == [{**resolved[0], "approval_id": pending["id"], "decision": "expired"}], resolved
    assert kinds.index("approval.resolved") < kinds.index("tool.result"), kinds


async def test_a_call_whose_run_ended_while_it_waited_is_audited_as_canceled(node):
    """The API's cancel withdraws the run's requests (expired, RUN_ENDED) before the worker hears of the cancel;
    a waiting call that saw that first was audited approval.rejected "expired without a decision". The withdraw
    is done here alone, so that the call sees it first every time."""
    tid, key, c = await _tenant(node)
    await _put(c, "version: 1\nrules:\n  - {id: human, tool: echo, verdict: require_approval}\n")
    run = await start(c, "caller", json.dumps({"calls": [{"tool": "echo", "args": {"n": 1}}]}))
    pending = await _pending(c, run["id"])
    await node.rt.services.approvals.decide(tid, pending["id"], status="expired", decided_by=None, reason=RUN_ENDED,
                                            now=time.time())

    async def outcome() -> list[tuple[str, str]]:
        audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
        return [(a["kind"], a["code"]) for a in audit if a["kind"].startswith(("tool.", "approval.rejected"))]

    deadline = time.monotonic() + 20
    while not await outcome():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await outcome() == [("tool.canceled", "run.ended")]
    await c.post(f"/v1/runs/{run['id']}/cancel")
    await collect(c, run["id"])
    assert await outcome() == [("tool.canceled", "run.ended")]


async def test_revoking_a_revoked_key_again_succeeds_as_the_cli_does(node):
    """DELETE /v1/keys/{id} of a key already revoked was a 404 for a key GET /v1/keys still lists (the CLI's
    `key revoke` succeeds: a retried request holds). An unknown id is still a 404."""
    _, key, c = await _tenant(node)
    made = (await c.post("/v1/keys", json={"role": "viewer"})).json()
    for _ in range(2):
        r = await c.delete(f"/v1/keys/{made['id']}")
        assert r.status_code == 200 and r.json() == {"id": made["id"], "revoked": True}, r.text
    assert (await c.delete("/v1/keys/key_doesnotexist")).status_code == 404


@pytest.mark.parametrize("name", ["a\nb", "\u202egnp.exe", "\u200b", "\x1b[31mred\x1b[0m", "x\u2028y", "hi\U000E0041"])
async def test_user_and_project_names_hold_no_control_or_format_characters(node, name):
    """Users and projects took names that show as something else in every listing (a bidi override, a
    terminal escape, an invisible name), where tenant and bundle names refuse them."""
    _, key, c = await _tenant(node)
    for path in ("/v1/users", "/v1/projects"):
        r = await c.post(path, json={"name": name})
        assert r.status_code == 422 and r.json()["code"] == "input.invalid", r.text
        assert "control or format" in r.text
    assert (await c.get("/v1/users")).json()["data"] == [] and (await c.get("/v1/projects")).json()["data"] == []
    for ok in ("Zoë Ångström", "שלום", "\U0001f469\u200d\U0001f4bb dev"):
        assert (await c.post("/v1/users", json={"name": ok})).status_code == 201


async def test_who_may_do_what_changes_are_audited(node):
    """Keys minted and revoked, users, projects and memberships left no audit record (found by a walkthrough):
    each is now one record naming the key that made the change; a repeated no-op (revoking a revoked key,
    adding a member again) records nothing."""
    _, key, c = await _tenant(node)
    me = (await c.get("/v1/me")).json()["key_id"]
    made = (await c.post("/v1/keys", json={"role": "viewer"})).json()
    for _ in range(2):
        assert (await c.delete(f"/v1/keys/{made['id']}")).status_code == 200
    user = (await c.post("/v1/users", json={"name": "ann"})).json()
    project = (await c.post("/v1/projects", json={"name": "apollo"})).json()
    for _ in range(2):
        assert (await c.put(f"/v1/projects/{project['id']}/members/{user['id']}")).status_code == 200
    assert (await c.delete(f"/v1/projects/{project['id']}/members/{user['id']}")).status_code == 200
    audit = (await c.get("/v1/audit")).json()["data"]
    assert [(a["kind"], a["detail"]["key_id"]) for a in audit] == [
        ("key.created", me), ("key.revoked", me), ("user.created", me), ("project.created", me),
        ("member.added", me), ("member.removed", me)], audit
    assert audit[0]["detail"] | {"id": made["id"], "role": "viewer"} == audit[0]["detail"]
    assert audit[4]["detail"]["user_id"] == user["id"] and audit[4]["detail"]["project_id"] == project["id"]


@pytest.mark.parametrize("ending", ["cancel", "timeout"])
async def test_a_receipt_asked_for_on_a_run_s_end_has_the_call_the_end_interrupted(node, ending, tmp_path):
    """Was: a run canceled through the API ends at once, and its worker audited the call in flight
    (tool.canceled) a poll later: a receipt asked for on run.canceled lacked that call. A receipt now waits
    (bounded) for the worker to let go of the run, which it does once all of it is recorded."""
    tid, key = await node.tenant()
    c = node.client(key)
    await _put(c, "version: 1\nrules:\n  - {id: human, tool: echo, verdict: require_approval}\n")
    bundle = tmp_path / "waits"
    bundle.mkdir()
    limits = "limits: {timeout_s: 2}\n" if ending == "timeout" else ""
    (bundle / "bundle.yaml").write_text(f'name: waits\nversion: "1"\ntools: [echo]\n{limits}')
    (bundle / "main.py").write_text("async def main(ctx):\n    await ctx.call('echo', n=1)\n")
    await node.rt.registry.register_dir(bundle, tid)
    run = await start(c, "waits", "x")
    await _pending(c, run["id"])
    if ending == "cancel":
        assert (await c.post(f"/v1/runs/{run['id']}/cancel")).status_code == 200
    events = await collect(c, run["id"])
    assert events[-1].event == ("run.canceled" if ending == "cancel" else "run.timed_out"), events[-1]
    pem = (await c.get("/v1/receipts/public-key")).text
    receipt = (await c.get(f"/v1/runs/{run['id']}/receipt")).json()  # at once, as a client would
    assert verify_receipt(receipt, pem)
    assert [(s["kind"], s["code"]) for s in receipt["spans"]] == [("tool.canceled", "run.ended")], receipt
    # and the worker has let go of it: the next receipt does not wait
    assert await node.rt.services.runs.held(tid, run["id"]) is None
