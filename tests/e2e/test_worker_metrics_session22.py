"""Worker-side metrics (session 22): governance decisions by audit kind, runs ended by status, runs running.

Before: /metrics had HTTP series only, and a `stockade worker` served nothing - an operator saw no tool
call, denial, approval or run outcome. Now `stockade serve`'s /metrics has them too (`stockade api`'s the
decisions it records itself), and a worker serves them on STOCKADE_WORKER_METRICS_ADDR. No label names a tenant, tool or run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import ROOT, collect, start_node, worker_process, worker_uid_env

pytestmark = pytest.mark.timeout(180)

BUNDLES = Path(__file__).resolve().parent / "bundles"
# a tool name the tenant chose: refused (tool.invalid), and never a label
TENANT_TOOL = "tenantchosen.zq7kx9_marker"
PLAN = {"calls": [
    {"tool": "storage.write", "args": {"path": "m.txt", "content": "hi", "scope": "shared"}},  # default policy: allowed
    {"tool": "http.request", "args": {"url": "https://example.com/", "method": "GET"}},  # no rule: denied
    {"tool": TENANT_TOOL, "args": {}},
]}
WORKER_SERIES = ("stockade_runs_finished", "stockade_runs_active", "stockade_sandbox_start_seconds",
                 "stockade_run_duration_seconds")  # a node without workers has none of these


def _fams(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(fams: dict[str, Any], name: str, sample: str | None = None, **labels: str) -> float:
    fam = fams.get(name)
    if fam is None:
        return 0.0
    return sum(s.value for s in fam.samples
               if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()))


def _decisions(fams: dict[str, Any]) -> dict[str, float]:
    fam = fams.get("stockade_governance_decisions")
    return {s.labels["kind"]: s.value for s in fam.samples} if fam else {}


def _finished(fams: dict[str, Any]) -> dict[str, float]:
    fam = fams.get("stockade_runs_finished")
    return {s.labels["status"]: s.value for s in fam.samples} if fam else {}


async def _scrape(client: httpx.AsyncClient, url: str = "/metrics") -> dict[str, Any]:
    r = await client.get(url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:200]
    fams = _fams(r.text)
    # start-time gauges dropped (a ``<name>_created`` series per counter and histogram series doubled the output)
    assert not [s.name for f in fams.values() for s in f.samples if s.name.endswith("_created")]
    return fams


async def _tenant_with_caller(node: Any) -> tuple[str, httpx.AsyncClient]:
    tid, key = await node.tenant()
    await node.rt.registry.register_dir(BUNDLES / "caller", tid)
    await node.rt.registry.register_dir(BUNDLES / "crasher", tid)
    return tid, node.client(key)


async def _run(c: httpx.AsyncClient, bundle: str, plan: dict[str, Any] | None = None) -> tuple[str, list[Any]]:
    r = await c.post("/v1/runs", json={"bundle": bundle, "input": json.dumps(plan or {})})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    return run_id, await asyncio.wait_for(collect(c, run_id), 60)


def _diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


async def _check_the_workload(c: httpx.AsyncClient, tid: str, scrape: Any) -> None:
    """One run making an allowed, a denied and a refused call, one run that crashes: counted by kind and status."""
    before = await scrape()
    run_id, events = await _run(c, "caller", PLAN)
    assert events[-1].event == "run.completed", events[-1]
    audit = (await c.get("/v1/audit", params={"run_id": run_id})).json()["data"]
    kinds = sorted(a["kind"] for a in audit)
    assert kinds == sorted(["tool.allowed", "tool.completed", "tool.denied", "tool.invalid"]), kinds
    crashed, events = await _run(c, "crasher")
    assert events[-1].event == "run.failed", events[-1]
    after = await scrape()
    # the worker counts a run's end, and lets go of it, just after its terminal event is out: the client may be first
    async with asyncio.timeout(30):
        while _value(after, "stockade_runs_active") != 0:
            await asyncio.sleep(0.05)
            after = await scrape()
    assert _diff(_decisions(after), _decisions(before)) == {
        "tool.allowed": 1, "tool.completed": 1, "tool.denied": 1, "tool.invalid": 1}
    assert _diff(_finished(after), _finished(before)) == {"succeeded": 1, "failed": 1}
    count = "stockade_run_duration_seconds_count"
    assert _value(after, "stockade_run_duration_seconds", count) - _value(before, "stockade_run_duration_seconds",
                                                                          count) == 2
    started = "stockade_sandbox_start_seconds_count"
    assert _value(after, "stockade_sandbox_start_seconds", started, pool="cold") - _value(
        before, "stockade_sandbox_start_seconds", started, pool="cold") == 2
    # bounded labels: nothing the tenant chose or owns names a series
    for fam in after.values():
        for s in fam.samples:
            for v in s.labels.values():
                assert TENANT_TOOL not in v and tid not in v and run_id not in v and crashed not in v, s


async def test_serve_metrics_count_decisions_by_kind_and_runs_by_status(node):
    tid, c = await _tenant_with_caller(node)
    anon = node.client()
    await _check_the_workload(c, tid, lambda: _scrape(anon))
    text = (await anon.get("/metrics")).text
    assert TENANT_TOOL not in text and tid not in text
    assert "stockade_http_requests_total" in text  # next to the HTTP ones


async def test_an_api_node_counts_the_decisions_it_records_and_shows_no_worker_series(node_config):
    """Approval votes and admin changes are recorded by whichever node took the request: on a `stockade api`
    node they were counted in a registry its /metrics did not show."""
    node = await start_node(node_config, workers=False)
    try:
        anon = node.client()
        before = _decisions(await _scrape(anon))
        _, key = await node.tenant()
        c = node.client(key)
        for role in ("approver", "viewer"):
            assert (await c.post("/v1/keys", json={"role": role})).status_code == 201
        text = (await anon.get("/metrics")).text
        assert _diff(_decisions(_fams(text)), before) == {"key.created": 2}
        assert "stockade_http_requests_total" in text
        assert not [name for name in WORKER_SERIES if name in text], text
    finally:
        await node.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _until_listening(proc: subprocess.Popen, url: str, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=5) as probe:
        while True:
            assert proc.poll() is None, proc.communicate(timeout=10)[1].decode(errors="replace")
            with contextlib.suppress(httpx.TransportError):
                await probe.get(url)
                return
            await asyncio.sleep(0.1)


def _reap(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate(timeout=10)[1].decode(errors="replace")


@pytest.mark.parametrize("stack_kind", ["production"])  # `stockade worker` runs on PostgreSQL and Redis only
async def test_a_standalone_worker_serves_metrics_on_its_address_and_nothing_else(node_config):
    api = await start_node(node_config, workers=False)
    addr = f"127.0.0.1:{_free_port()}"
    worker = worker_process(node_config, uid_env={**worker_uid_env(), "STOCKADE_WORKER_METRICS_ADDR": addr})
    try:
        base = f"http://{addr}"
        await _until_listening(worker, f"{base}/metrics")
        tid, c = await _tenant_with_caller(api)
        async with httpx.AsyncClient(base_url=base, timeout=10) as scraper:
            await _check_the_workload(c, tid, lambda: _scrape(scraper))
            for path in ("/", "/metricsx", "/metrics/", "/v1/runs", "/healthz"):
                assert (await scraper.get(path)).status_code == 404, path
            r = await scraper.post("/metrics", content=b"x")
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
            head = await scraper.head("/metrics")
            assert head.status_code == 200 and head.content == b""
        api_text = (await api.client().get("/metrics")).text  # the API node's own: HTTP and its own decisions
        assert not [name for name in WORKER_SERIES if name in api_text]
        assert 'kind="tool.allowed"' not in api_text  # the worker's decisions are the worker's to show
        worker.send_signal(signal.SIGTERM)  # a graceful stop closes the listener and ends the process
        assert await asyncio.to_thread(worker.wait, 30) == 0
        with pytest.raises(httpx.TransportError):
            async with httpx.AsyncClient(timeout=5) as late:
                await late.get(f"{base}/metrics")
    finally:
        err = _reap(worker)
        await api.stop()
    assert "Traceback" not in err, err


@pytest.mark.parametrize("stack_kind", ["production"])  # `stockade worker` runs on PostgreSQL and Redis only
async def test_a_worker_that_cannot_listen_on_its_metrics_address_does_not_start(node_config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        worker = worker_process(node_config, uid_env={**worker_uid_env(), "STOCKADE_WORKER_METRICS_ADDR": addr})
        try:
            rc = await asyncio.to_thread(worker.wait, 60)
        finally:
            err = _reap(worker)
    assert rc != 0
    assert f"invalid setting STOCKADE_WORKER_METRICS_ADDR: cannot listen on {addr}" in err, err
    assert "Traceback" not in err, err


def test_a_bad_metrics_address_is_refused_naming_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env.update(STOCKADE_DATA_DIR=str(tmp_path), STOCKADE_WORKER_METRICS_ADDR="9100")
    out = subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, capture_output=True,
                         timeout=60)
    assert out.returncode != 0
    assert b"invalid setting STOCKADE_WORKER_METRICS_ADDR: '9100' must be host:port" in out.stderr, out.stderr
