"""A bundle that fails while replies to its other calls are still on the way keeps its error (both stacks).

Found by a contract check (session 15): ``asyncio.gather`` of 40 ``ctx.call("echo")`` and 40 ``ctx.answer``
under a policy allowing one call per 100 s. The first refused call (``rate.limited``) raised out of
``main()``; the SDK reported that in its done frame and hung up, while the supervisor was still replying to
the other 39 calls. A reply written after the hang-up failed (EPIPE), the transport closed at once, and the
done frame still queued on the socket was never read: 17 runs in 20 ended ``sandbox.crashed`` ("the sandbox
exited (code 1) without finishing"), the bundle's ``ToolError`` and traceback lost. The deterministic
version of the race is in ``tests/test_run_ending.py``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.e2e.harness import collect, make_data_dir
from tests.e2e.test_run_pipeline import check_stream

pytestmark = pytest.mark.timeout(120)

POLICY = """version: 1
rules:
  - id: echo
    tool: echo
    verdict: allow
limits:
  tool_burst: 1
  tool_per_s: 0.01
"""

MAIN = """
import asyncio

async def main(ctx):
    n = int(ctx.input)
    await asyncio.gather(*[ctx.call("echo", n=i) for i in range(n)], *[ctx.answer(str(i)) for i in range(n)])
"""


async def test_a_bundle_failing_with_replies_in_flight_ends_with_its_own_error(node):
    runs = 4
    outcomes = []
    for _ in range(runs):  # a fresh tenant each time: its one call in 100 s is the run's first call
        tid, key = await node.tenant()
        c = node.client(key)
        d = Path(make_data_dir()) / "gatherer"
        d.mkdir()
        (d / "bundle.yaml").write_text("name: gatherer\nversion: '1'\ntools: [echo]\nlimits:\n  timeout_s: 30\n")
        (d / "main.py").write_text(textwrap.dedent(MAIN))
        await node.rt.registry.register_dir(d, tid)
        assert (await c.put("/v1/policy", content=POLICY, headers={"Content-Type": "application/yaml"})).status_code == 200
        r = await c.post("/v1/runs", json={"bundle": "gatherer", "input": "40"})
        assert r.status_code == 201, r.text
        events = await collect(c, r.json()["id"])
        check_stream(events)
        outcomes.append(events[-1])
    for last in outcomes:
        assert (last.event, last.data["code"]) == ("run.failed", "rate.limited"), last.data
        assert last.data["message"].startswith("ToolError: rate.limited") and "Traceback" in last.data["traceback"]
