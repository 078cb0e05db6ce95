"""A node whose sandbox backend cannot start bundles (session 20; an ops walkthrough's finding).

Was: with ``STOCKADE_SANDBOX_BWRAP`` mistyped, the worker's launch raised ``SandboxError``, whose handler read
``public_detail`` (only ``StockadeError`` has it): an AttributeError, and every run failed ``internal`` ("the
server log says why"). And a worker-only node started anyway and took its share of the fleet's runs, failing
each, with nothing but a log line to tell the operator. Now the run fails ``sandbox.unavailable`` (without the
host's paths), and ``stockade worker`` refuses to start.
"""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from tests.e2e.harness import collect, worker_process, worker_uid_env
from tests.e2e.test_run_pipeline import start

pytestmark = pytest.mark.timeout(60)

MISSING = "/nonexistent/bwrapp"


@pytest.mark.node_settings(sandbox_bwrap=MISSING, sandbox_warm_pool=0)
async def test_a_run_on_a_node_that_cannot_start_sandboxes_fails_sandbox_unavailable(node):
    _, key = await node.tenant()
    c = node.client(key)
    run = await start(c, "echo", "hello")
    events = await asyncio.wait_for(collect(c, run["id"]), 30)
    assert events[-1].event == "run.failed", events[-1].data
    assert events[-1].data["code"] == "sandbox.unavailable"
    assert MISSING not in events[-1].data["message"]  # the host's paths stay in the server log
    assert (await c.get("/readyz")).status_code == 503


@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_worker_that_cannot_start_sandboxes_refuses_to_start(node_config, stack_kind):
    worker = worker_process(node_config, uid_env={**worker_uid_env(), "STOCKADE_SANDBOX_BWRAP": MISSING})
    try:
        _, err = await asyncio.to_thread(worker.communicate, timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise
    assert worker.returncode != 0
    assert "sandbox.unavailable" in err.decode() and "would fail every run" in err.decode()
