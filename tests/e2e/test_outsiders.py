"""Who may talk to a run's socket (nobody but its sandbox), and what a lost worker leaves behind (nothing)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import collect, priced_call_in_flight, read_sse, start_node, worker_process
from tests.e2e.test_run_pipeline import check_stream, push, start

ROOT = Path(__file__).resolve().parents[2]


def _connect_and_read(path: str) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(path)
    data = b""
    try:
        s.sendall(b'\x00\x00\x00\x13{"v":1,"type":"hello"}')
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        data += b"<timeout>"
    except (ConnectionResetError, BrokenPipeError):
        data += b"<reset>"
    finally:
        s.close()
    return data


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play the other uid")
async def test_outsider_processes_get_nothing_from_a_runs_socket(node):
    tid, key = await node.tenant()
    await push(node, tid, "sleeper")
    c = node.client(key)
    run = await start(c, "sleeper", "1.5")
    sock = node.data_dir / "runs" / run["id"] / "sock" / "s"
    async for e in read_sse(c, f"/v1/runs/{run['id']}/events"):
        if e.event == "message.delta":
            break
    assert sock.exists()
    # root on the host, outside the sandbox: once the run's sandbox is connected the socket listens no more
    # (the kernel refuses); before that, the kernel names the caller and the supervisor refuses it (audited)
    try:
        got = await asyncio.to_thread(_connect_and_read, str(sock))
    except ConnectionRefusedError:
        got = b"<refused>"
    assert b"welcome" not in got and b"run_id" not in got
    # another uid cannot even reach the socket's directory
    code = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1]); print('connected')\nexcept OSError as e: print(type(e).__name__)"
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", code, str(sock)], user=65534, group=65534, extra_groups=[],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout.strip() == "PermissionError", out
    events = await collect(c, run["id"])
    check_stream(events)
    assert events[-1].event == "run.completed"
    if got != b"<refused>":
        audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
        assert any(a["kind"] == "peer.rejected" for a in audit)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stack_kind", ["production"])
async def test_worker_killed_mid_call_fails_the_run_and_releases_its_reservation(node_config, stack_kind):
    """A separate `stockade worker` process is SIGKILLed while its run's priced call is in flight."""
    settings = node_config.model_copy(update={"queue_visibility_s": 1.0, "reservation_ttl_s": 2.0})
    api = await start_node(settings, workers=False)
    worker = worker_process(settings)
    second = None
    try:
        tid, key = await api.tenant(budget_usd=1.0)
        await push(api, tid, "slowtool")
        c = api.client(key)
        run = await priced_call_in_flight(c)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        second = await start_node(settings, api=True, workers=True)  # another node picks the job up again
        events = await asyncio.wait_for(collect(c, run["id"]), 30)
        check_stream(events)
        assert events[-1].event == "run.failed" and events[-1].data["code"] == "run.worker_lost"
        budgets = (await c.get("/v1/budgets")).json()["data"]
        assert all(b["reserved_usd"] == 0 for b in budgets)
        assert (await c.get(f"/v1/runs/{run['id']}")).json()["status"] == "failed"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        if second is not None:
            await second.stop()
        await api.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stack_kind", ["production"])
async def test_rate_limit_holds_across_two_supervisor_nodes(node_config, stack_kind):
    """Two nodes (each with its own worker, Redis client and DB pool) run one tenant's runs; its burst is global."""
    a = await start_node(node_config.model_copy(update={"worker_id": "node-a"}))
    b = await start_node(node_config.model_copy(update={"worker_id": "node-b"}))
    try:
        tid, key = await a.tenant()
        await push(a, tid, "caller")
        c = a.client(key)
        policy = ("version: 1\nrules:\n  - id: echo\n    tool: echo\n    verdict: allow\n"
                  "limits: {tenant_per_s: 0.01, tenant_burst: 12}\n")
        assert (await c.put("/v1/policy", content=policy, headers={"Content-Type": "application/yaml"})).status_code == 200
        import json as _json

        plan = _json.dumps({"calls": [{"tool": "echo", "args": {"i": i}} for i in range(6)], "concurrent": True})
        runs = [await start(c, "caller", plan) for _ in range(6)]
        allowed = limited = 0
        workers = set()
        t0 = asyncio.get_running_loop().time()
        for run in runs:
            events = await collect(c, run["id"])
            check_stream(events)
            results = next(e for e in events if e.event == "custom").data["data"]
            allowed += sum(1 for r in results if "ok" in r)
            limited += sum(1 for r in results if r.get("error") == "rate.limited")
            workers.add((await a.rt.services.runs.get_run(tid, run["id"])).worker_id)
        elapsed = asyncio.get_running_loop().time() - t0
        assert allowed + limited == 36
        assert 12 <= allowed <= 12 + int(0.01 * elapsed) + 1, (allowed, elapsed)
        assert len(workers) == 2, workers  # both nodes really executed runs
    finally:
        await b.stop()
        await a.stop()
