"""Per-user velocity from bundles through the API, on both stacks: a user's runs share one count.

On PostgreSQL + Redis the history lives in Redis (every worker judges against it:
tests/contract/test_velocity_log.py runs two nodes' policy steps against one); embedded, in the one
process.
"""

from __future__ import annotations

import pytest

from tests.e2e.test_governance import plan, results_of, setup
from tests.e2e.test_run_pipeline import start

pytestmark = pytest.mark.timeout(120)

PER_USER = """
version: 1
rules:
  - id: two-per-user
    tool: echo
    velocity: {max: 2, per_s: 3600, scope: user}
    verdict: deny
    reason: two echoes an hour per user
  - id: echo
    tool: echo
    verdict: allow
"""


async def test_a_users_runs_share_one_velocity_count(node):
    _, _, c = await setup(node, PER_USER)
    alice = (await c.post("/v1/users", json={"name": "alice"})).json()["id"]
    bob = (await c.post("/v1/users", json={"name": "bob"})).json()["id"]
    outcomes = []
    for user in (alice, alice, alice, bob):
        run = await start(c, "caller", plan({"tool": "echo", "args": {"n": 1}}), user_id=user)
        results, _ = await results_of(c, run["id"])
        outcomes.append(results[0].get("error") or "ok")
    assert outcomes == ["ok", "ok", "policy.denied", "ok"]
    if node.rt.settings.redis_url:  # the count is the one every worker reads
        keys = [k async for k in node.rt.services.events._client.scan_iter(f"{node.rt.settings.redis_prefix}vel:*")]
        assert len(keys) == 4, keys  # alice's and bob's echo: a list and a version each
