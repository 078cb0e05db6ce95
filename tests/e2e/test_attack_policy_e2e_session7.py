"""Session 7 attacks on PUT /v1/policy through a whole node, on both stacks."""

from __future__ import annotations

import pytest

from supervisor.policy import MAX_POLICY_BYTES
from supervisor.policy.cli import validate_file
from tests._loop import watch_loop

pytestmark = pytest.mark.timeout(120)


def _big_policy(limit: int) -> str:
    # many distinct tool globs: each compiles to its own matcher, the slowest document per byte to check
    head = "version: 1\nrules:\n"
    lines, size, i = [], len(head), 0
    while True:
        line = f"  - {{id: r{i}, tool: [{','.join(f'a{i}*b{j}*c' for j in range(100))}], verdict: allow}}\n"
        if size + len(line) > limit:
            break
        lines.append(line)
        size += len(line)
        i += 1
    return head + "".join(lines)


async def test_a_huge_policy_put_does_not_stall_the_api(node):
    # attack: an admin PUTs a policy at the size limit; it was checked (~1 s) on the event loop that serves
    # every other request and stream of the process. Now it is checked on a thread.
    _, key = await node.tenant()
    c = node.client(key)
    text = _big_policy(MAX_POLICY_BYTES - 1024)
    async with watch_loop() as stall:
        r = await c.put("/v1/policy", content=text, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    assert stall.longest < max(0.3, stall.took / 3), stall
    got = await c.get("/v1/policy")
    assert got.text == text and got.headers["Policy-Version"] == r.json()["version"]


async def test_what_policy_validate_accepts_the_api_accepts(node, tmp_path):
    # attack: none - a broken promise: `stockade policy validate` passed documents up to 512 KiB while
    # PUT /v1/policy refused anything over 256 KiB (input.too_large)
    _, key = await node.tenant()
    c = node.client(key)
    ok = _big_policy(300 * 1024)
    (tmp_path / "ok.yaml").write_text(ok)
    assert validate_file(tmp_path / "ok.yaml") == []
    r = await c.put("/v1/policy", content=ok, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text[:300]
    too_big = ok + "#" * (MAX_POLICY_BYTES - len(ok) + 1)
    (tmp_path / "big.yaml").write_text(too_big)
    assert validate_file(tmp_path / "big.yaml") != []
    r = await c.put("/v1/policy", content=too_big, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 413 and r.json()["code"] == "input.too_large", r.text[:300]
    assert (await c.get("/v1/policy")).text == ok


NARROW = """
version: 1
rules:
  - {id: too-big, tool: echo, when: {args.n: {gt: 5}}, verdict: deny, reason: too big}
  - {id: shrink, tool: echo, when: {args.n: {eq: 4}}, verdict: downgrade, downgrade: {args.n: 2}}
  - {id: echo, tool: echo, verdict: allow}
"""


async def test_a_bundle_downgrade_cannot_widen_and_the_audit_names_what_ran(node, tmp_path):
    # attack: a bundle whose policy layer "downgrades" echo's n from 1 to 1000, past the tenant's deny rule;
    # and the audit record of a tenant downgrade must carry the hash of the arguments that ran
    import json
    import shutil

    from supervisor.audit.canonical import args_hash
    from tests.e2e.harness import collect
    from tests.e2e.test_run_pipeline import TEST_BUNDLES, start

    tid, key = await node.tenant()
    c = node.client(key)
    r = await c.put("/v1/policy", content=NARROW, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    bundle = tmp_path / "widener"
    shutil.copytree(TEST_BUNDLES / "caller", bundle)
    (bundle / "bundle.yaml").write_text(
        'name: widener\nversion: "1"\ntools: ["*"]\npolicy:\n  rules:\n'
        '    - {id: b-up, tool: echo, when: {args.n: {eq: 1}}, verdict: downgrade, downgrade: {args.n: 1000}}\n')
    await node.rt.registry.register_dir(bundle, tid)
    run = await start(c, "widener", json.dumps({"calls": [{"tool": "echo", "args": {"n": 1}},
                                                          {"tool": "echo", "args": {"n": 4}}]}))
    events = await collect(c, run["id"])
    results = next(e for e in events if e.event == "custom").data["data"]
    assert results[0]["error"] == "policy.denied" and results[0]["extra"]["rule_id"] == "too-big", results
    assert results[1] == {"ok": {"n": 2}}
    audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
    denied = [a for a in audit if a["kind"] == "tool.denied"]
    assert [a["rule_id"] for a in denied] == ["too-big"]
    allowed = [a for a in audit if a["kind"] == "tool.allowed"]
    assert [(a["rule_id"], a["args_hash"]) for a in allowed] == [("shrink", args_hash("echo", {"n": 2}))]
