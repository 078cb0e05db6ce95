"""An operator's walkthrough of what a node says about itself (session 21): /metrics, /readyz, /healthz, logs.

Findings (each test named here fails without its fix):

- /readyz hung while PostgreSQL did not answer (a partition, a stalled server: the fault proxy swallowing
  every byte): its ping waited on the pool's 10 s acquire timeout, then on a query with no timeout at all -
  a probe with a 1-5 s timeout saw no answer, not a 503, and an orchestrator cannot tell "not ready" from
  "stuck". Each check now answers within ``PROBE_TIMEOUT_S`` (app/routes/health.py):
  ``test_readyz_answers_in_time_while_a_store_hangs_and_recovers``.
- ``stockade serve`` logged in two formats to two streams: uvicorn's own logging config sent its access
  lines to stdout (block-buffered in a container: lines arrive late or are lost with the process),
  "INFO:     ..." without time or logger name, past the root handlers and so past their credential
  filter - a key a client put in the query (``?api_key=...``) was written in plain. A tenant whose text a
  provider quotes back in an error (an LLM refusing a prompt) put raw ANSI escapes in a log line
  (``llm.chat ... attempt 1 failed (...)``): a terminal tailing the log ran them (app/server.py, the logging
  set-up): ``test_serve_logs_one_format_one_line_per_request_no_secret_no_escape``.

A store outage was logged on every loop iteration - each sweep step once per ``sweep_interval_s``, the claim
loop "queue unavailable; retrying" every second (86 lines in 10 s); now when it starts and ends, with a reminder
a minute (supervisor/errors.py ``Outage``): ``test_a_store_outage_of_ten_seconds_is_a_few_log_lines``.

Attacks that held keep a test: label sets are bounded (5,000 distinct bundle names, run ids, keys and
hundreds of tenants and tool names add no series), /metrics names none of them and answers fast; the
counters and gauges count a known workload; /readyz reports a missing sandbox backend and a Redis or
PostgreSQL outage with 503 while /healthz stays 200, and both recover without a restart; no configured
secret, API key or database password reaches a log line, even at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.keys import generate_key
from tests.e2e.harness import ROOT, collect, idle_runs, make_data_dir, settings_for, start_node, worker_uid_env
from tests.fakes.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(180)

CALLER = Path(__file__).resolve().parent / "bundles" / "caller"


async def _families(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:200]
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _value(fams: dict[str, Any], name: str, sample: str | None = None, **labels: str) -> float:
    fam = fams[name]
    return sum(s.value for s in fam.samples
               if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()))


def _series(fams: dict[str, Any]) -> int:
    return sum(len(f.samples) for f in fams.values())


# --- /metrics


async def test_metrics_have_types_units_and_count_a_known_workload(node):
    anon = node.client()
    assert (await anon.get("/healthz")).status_code == 200  # a first request, counted and timed
    fams = await _families(anon)
    # (the client library adds a ``<name>_created`` gauge per counter / histogram series: their start times)
    mine = {n: f.type for n, f in fams.items() if n.startswith("stockade_")
            and not (n.endswith("_created") and n.removesuffix("_created") in fams)}
    assert mine == {"stockade_http_requests": "counter", "stockade_http_request_seconds": "histogram",
                    "stockade_runs_created": "counter", "stockade_sse_subscribers": "gauge",
                    "stockade_queue_depth": "gauge",
                    # the workers' series (serve runs them; supervisor/metrics.py)
                    "stockade_governance_decisions": "counter", "stockade_runs_finished": "counter",
                    "stockade_runs_active": "gauge", "stockade_sandbox_start_seconds": "histogram",
                    "stockade_run_duration_seconds": "histogram"}
    created = [s.name for f in fams.values() for s in f.samples if s.name.endswith("_created")]
    assert not created, created  # series start times: left out, they doubled the output
    samples = {s.name for n in mine for s in fams[n].samples}
    assert {"stockade_http_requests_total", "stockade_runs_created_total", "stockade_http_request_seconds_bucket",
            "stockade_http_request_seconds_sum", "stockade_http_request_seconds_count"} <= samples
    before_runs = _value(fams, "stockade_runs_created", "stockade_runs_created_total")
    before_201 = _value(fams, "stockade_http_requests", "stockade_http_requests_total", method="POST", status="201")

    tid, key = await node.tenant()
    c = node.client(key)
    n = 3
    ids = []
    for i in range(n):
        r = await c.post("/v1/runs", json={"bundle": "echo", "input": f"hi {i}"}, headers={"Idempotency-Key": f"k{i}"})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    replay = await c.post("/v1/runs", json={"bundle": "echo", "input": "hi 0"}, headers={"Idempotency-Key": "k0"})
    assert replay.json()["id"] == ids[0]  # a replay: no new run
    assert (await c.post("/v1/runs", json={"bundle": "nosuch", "input": "x"})).status_code == 404
    for run_id in ids:
        events = await asyncio.wait_for(collect(c, run_id), 60)
        assert events[-1].event == "run.completed"

    # an SSE stream open is one subscriber; closed, none
    (idle,) = await idle_runs(node, tid, 1)
    opened = asyncio.Event()

    async def hold() -> None:
        async with c.stream("GET", f"/v1/runs/{idle}/events") as resp:
            assert resp.status_code == 200
            async for _ in resp.aiter_raw():
                opened.set()

    holder = asyncio.create_task(hold())
    await asyncio.wait_for(opened.wait(), 30)
    assert _value(await _families(anon), "stockade_sse_subscribers") == 1
    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holder
    for _ in range(200):
        if _value(await _families(anon), "stockade_sse_subscribers") == 0:
            break
        await asyncio.sleep(0.05)
    fams = await _families(anon)
    assert _value(fams, "stockade_sse_subscribers") == 0
    assert _value(fams, "stockade_runs_created", "stockade_runs_created_total") - before_runs == n
    posted = _value(fams, "stockade_http_requests", "stockade_http_requests_total", method="POST", status="201")
    assert posted - before_201 in (n, n + 1)  # the replay answers 201 or 200, as the API decides
    assert _value(fams, "stockade_http_requests", "stockade_http_requests_total", method="POST", status="404") >= 1
    assert _value(fams, "stockade_queue_depth") == 0
    count = _value(fams, "stockade_http_request_seconds", "stockade_http_request_seconds_count", method="POST")
    assert count == _value(fams, "stockade_http_requests", "stockade_http_requests_total", method="POST")


async def test_label_sets_stay_bounded_under_thousands_of_names(node):
    """Tenants, bundle names, run ids, keys and tool names a client invents add no series: labels are
    method (7 + OTHER) and status only. /metrics names none of them and answers fast."""
    anon = node.client()
    before = _series(await _families(anon))
    tenants = [await node.tenant(name=f"tenant-{i:04d}-observed") for i in range(150)]
    tid, key = tenants[0]
    await node.rt.registry.register_dir(CALLER, tid)
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        t_key = tenants[i % len(tenants)][1]
        c = clients[i % len(clients)]
        async with sem:
            kind = i % 4
            if kind == 0:
                r = await c.post("/v1/runs", json={"bundle": f"bundle-{i:05d}", "input": "x"},
                                 headers={"Authorization": f"Bearer {t_key}"})
            elif kind == 1:
                r = await c.get(f"/v1/runs/run_{i:020d}", headers={"Authorization": f"Bearer {t_key}"})
            elif kind == 2:
                r = await c.get("/v1/runs", headers={"Authorization": f"Bearer {generate_key()}"})
            else:
                r = await c.get(f"/v1/runs/{i}/events?after={i}", headers={"Authorization": f"Bearer {t_key}"})
            assert r.status_code in (401, 404, 422), r.text

    clients = [node.client() for _ in range(16)]
    await asyncio.gather(*(one(i) for i in range(5000)))
    # tool names from a bundle: 300 invented ones in one run
    c = node.client(key)
    plan = {"calls": [{"tool": f"tool.invented-{i:04d}", "args": {}} for i in range(300)]}
    r = await c.post("/v1/runs", json={"bundle": "caller", "input": json.dumps(plan)})
    assert r.status_code == 201, r.text
    events = await asyncio.wait_for(collect(c, r.json()["id"]), 120)
    assert events[-1].event == "run.completed", events[-1]

    start = time.monotonic()
    resp = await anon.get("/metrics")
    took = time.monotonic() - start
    fams = {f.name: f for f in text_string_to_metric_families(resp.text)}
    after = _series(fams)
    # new statuses (401, 404, 422, 201) and a POST histogram may appear; nothing per name
    assert after - before <= 80, (before, after)
    assert took < 1.0, took
    for needle in ("tenant-0", "bundle-0", "run_0000", "tool.invented", tid):
        assert needle not in resp.text, needle


# --- /readyz and /healthz


@pytest.mark.node_settings(sandbox_bwrap="/nonexistent/bwrap")
async def test_readyz_names_a_missing_sandbox_backend_while_healthz_stays_up(node):
    anon = node.client()
    r = await anon.get("/readyz")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "not_ready" and body["checks"]["sandbox"]["status"] == "unavailable"
    assert body["checks"]["sandbox"]["problems"] and body["checks"]["store"] == "ok"
    assert (await anon.get("/healthz")).status_code == 200


@contextlib.asynccontextmanager
async def _proxied_node(fresh_pg_url: str, redis_url: str, redis_prefix: str):
    """A production node whose PostgreSQL and Redis are each behind a fault proxy."""
    pg_proxy, redis_proxy = TcpProxy("127.0.0.1", 5432), TcpProxy("127.0.0.1", 6379)
    await pg_proxy.start()
    await redis_proxy.start()
    p = urlsplit(fresh_pg_url)
    pg = urlunsplit((p.scheme, f"{p.username or 'postgres'}@127.0.0.1:{pg_proxy.port}", p.path, "", ""))
    settings = settings_for("production", make_data_dir(), pg_url=pg,
                            redis_url=redis_proxy.url(path=urlsplit(redis_url).path or "/0"),
                            redis_prefix=redis_prefix)
    node = await start_node(settings)
    try:
        yield node, pg_proxy, redis_proxy
    finally:
        pg_proxy.restore()
        redis_proxy.restore()
        await node.stop()
        await pg_proxy.close()
        await redis_proxy.close()


async def _probe(client: httpx.AsyncClient, path: str, budget_s: float) -> tuple[int, dict[str, Any], float]:
    """The probe as a kubelet sends it: an answer within ``budget_s`` or a failure of the test."""
    start = time.monotonic()
    r = await asyncio.wait_for(client.get(path), budget_s)
    took = time.monotonic() - start
    return r.status_code, r.json(), took


async def _until_status(client: httpx.AsyncClient, status: int, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        code, body, _ = await _probe(client, "/readyz", 5.0)
        if code == status:
            return body
        assert time.monotonic() < deadline, (status, code, body)
        await asyncio.sleep(0.2)


async def test_readyz_answers_in_time_while_a_store_hangs_and_recovers(fresh_pg_url, redis_url, redis_prefix):
    async with _proxied_node(fresh_pg_url, redis_url, redis_prefix) as (node, pg_proxy, redis_proxy):
        anon = node.client()
        code, body, _ = await _probe(anon, "/readyz", 5.0)
        assert code == 200, body

        # PostgreSQL answers nothing (a partition / a stalled server): a 503 in time, not a hang
        pg_proxy.cut("blackhole")
        code, body, took = await _probe(anon, "/readyz", 5.0)
        assert code == 503 and body["checks"]["store"].startswith("unavailable"), body
        assert body["checks"]["queue"]["status"] == "ok"  # Redis is fine: the report says which one is away
        code, _, took_h = await _probe(anon, "/healthz", 1.0)
        assert code == 200 and took_h < 1.0
        # the partition ends as partitions do (the stalled connections are reset), the node recovers
        pg_proxy.cut("reset")
        code, body, _ = await _probe(anon, "/readyz", 5.0)
        assert code == 503, body
        pg_proxy.restore()
        await _until_status(anon, 200, 30)

        # Redis refused, then hanging: 503 naming the queue, in time; /healthz stays 200
        redis_proxy.cut("reset")
        body = await _until_status(anon, 503, 10)
        assert body["checks"]["queue"].startswith("unavailable") and body["checks"]["store"] == "ok", body
        assert (await _probe(anon, "/healthz", 1.0))[0] == 200
        redis_proxy.restore()
        await _until_status(anon, 200, 30)
        redis_proxy.cut("blackhole")
        code, body, took = await _probe(anon, "/readyz", 5.0)
        assert code == 503 and body["checks"]["queue"].startswith("unavailable"), body
        redis_proxy.cut("reset")
        redis_proxy.restore()
        await _until_status(anon, 200, 30)
        # /metrics does not hang on the queue either
        r = await asyncio.wait_for(anon.get("/metrics"), 5)
        assert r.status_code == 200


async def test_a_store_outage_of_ten_seconds_is_a_few_log_lines(fresh_pg_url, redis_url, redis_prefix, caplog):
    """Background loops (sweeps, queue claims, heartbeats) meet the outage every iteration: each says so
    when it starts (and when it ends), not once per iteration, and never with a traceback."""
    caplog.set_level(logging.DEBUG, logger="stockade")
    async with _proxied_node(fresh_pg_url, redis_url, redis_prefix) as (node, pg_proxy, redis_proxy):
        anon = node.client()
        caplog.clear()
        pg_proxy.cut("reset")
        redis_proxy.cut("reset")
        await asyncio.sleep(10)  # the outage lasts this long: a duration, not a race
        lines = [r for r in caplog.records if r.name.startswith("stockade") and r.levelno >= logging.INFO]
        pg_proxy.restore()
        redis_proxy.restore()
        await _until_status(anon, 200, 30)
        for t in node.rt.tasks:  # no background task died of it
            assert not t.done(), t
    assert lines  # the outage is not silent
    assert not any(r.exc_info for r in lines), [r.getMessage() for r in lines if r.exc_info]
    repeats = Counter(r.getMessage() for r in lines)
    assert max(repeats.values()) <= 2, repeats.most_common(8)


# --- logs of a real `stockade serve`


class _QuotingProvider:
    """An OpenAI-compatible endpoint that refuses every request with a 500 quoting the user's text (what
    providers do: "invalid content: ...")."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.requests = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = json.loads(await reader.readexactly(length) or b"{}")
            self.requests += 1
            quoted = " / ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "user")
            data = json.dumps({"error": {"message": f"upstream refused the prompt: {quoted}",
                                         "type": "server_error"}}).encode()
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")  # no ESC / CSI, no CR: only the newline ends a record


@pytest.fixture
def own_stores(stack_kind, request) -> dict[str, Any]:
    """A database of its own (its audit key is not the session's nodes' one); sync: the database fixture runs
    its own event loop."""
    if stack_kind == "embedded":
        return {}
    return {k: request.getfixturevalue(k) for k in ("fresh_pg_url", "redis_url", "redis_prefix")}


async def test_serve_logs_one_format_one_line_per_request_no_secret_no_escape(stack_kind, own_stores):
    data_dir = make_data_dir()
    port = _free_port()
    pg_password = "S3CRETpgpassword"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")}
    env.update({
        "STOCKADE_DATA_DIR": str(data_dir), "STOCKADE_BUNDLES_DIR": str(ROOT / "bundles"),
        "STOCKADE_WATCH_BUNDLES": "false", "STOCKADE_LOG_LEVEL": "debug", "STOCKADE_PORT": str(port),
        "STOCKADE_HOST": "127.0.0.1", "STOCKADE_SANDBOX_WARM_POOL": "0", "STOCKADE_LLM_MAX_RETRIES": "1",
        "STOCKADE_OPENAI_API_KEY": "sk-S3CRETopenai-0123456789",
        "STOCKADE_ANTHROPIC_API_KEY": "sk-ant-S3CRETanthropic-0123",
        "STOCKADE_AUDIT_KEY": "S3CRETaudit-0123456789abcdef0123",
        "STOCKADE_SECRETS_KEY": "S3CRETsecrets-0123456789abcdef01", **worker_uid_env(),
    })
    if stack_kind == "production":
        stores = own_stores
        p = urlsplit(stores["fresh_pg_url"])  # trust authentication: the password is sent nowhere, but it is configured
        env["STOCKADE_DATABASE_URL"] = urlunsplit((p.scheme, f"postgres:{pg_password}@{p.hostname}:{p.port or 5432}",
                                                   p.path, "", ""))
        env["STOCKADE_REDIS_URL"] = stores["redis_url"]
        env["STOCKADE_REDIS_PREFIX"] = stores["redis_prefix"]
    hostile = "hi \x1b[2J\x1b[31mFORGED\r2026-01-01 00:00:00,000 CRITICAL stockade: \x07owned\x1b[0m"
    provider = _QuotingProvider()
    async with provider as base_url:
        env["STOCKADE_OPENAI_BASE_URL"] = base_url
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                for _ in range(600):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await c.get("/healthz")).status_code == 200:
                            break
                    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                    await asyncio.sleep(0.1)
                made = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "app.cli", "tenant", "create",
                                                                "observed"], cwd=ROOT, env=env, capture_output=True,
                                               text=True, timeout=60)
                assert made.returncode == 0, made.stderr
                key = json.loads(made.stdout)["api_key"]
                c.headers["Authorization"] = f"Bearer {key}"
                run_ids = []
                for bundle, text in (("echo", "hello"), ("echo", "again"), ("chat", hostile)):
                    r = await c.post("/v1/runs", json={"bundle": bundle, "input": text})
                    assert r.status_code == 201, r.text
                    run_ids.append(r.json()["id"])
                for run_id in run_ids:
                    events = await asyncio.wait_for(collect(c, run_id), 60)
                    assert events[-1].event in ("run.completed", "run.failed"), events[-1]
                assert provider.requests >= 2  # the provider quoted the tenant's text back (and was retried)
                r = await c.get("/v1/runs?api_key=S3CRETquerykey")  # a client's mistake: a key in the query
                assert r.status_code == 422
                for path in ("/readyz", "/metrics", "/healthz", "/healthz"):
                    assert (await c.get(path)).status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.to_thread(proc.communicate, timeout=60)
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)
    text = err.decode("utf-8", "replace")
    assert not out.strip(), out[:2000]  # every log line goes to one stream (stderr), none is held in a buffer
    assert "Traceback" not in text, text[-4000:]
    lines = text.splitlines()
    bad = [line for line in lines if line and not _LINE.match(line)]
    assert not bad, bad[:10]  # one format: time, level, logger, message - uvicorn's lines too
    assert not _CONTROL.search(text), [line for line in lines if _CONTROL.search(line)][:5]
    assert "FORGED" in text  # the provider's quote was logged (escaped), so the check above saw it
    for secret in (key, key[4:], "S3CRET", pg_password):
        assert secret not in text, secret
    # one access line per request, each request once
    for what, path in (("GET", "/readyz"), ("GET", "/metrics"), ("POST", "/v1/runs")):
        hits = [line for line in lines if f'"{what} {path} HTTP/1.1"' in line]
        assert len(hits) == {"POST": 3}.get(what, 1), (path, hits)
    assert len([line for line in lines if '"GET /healthz HTTP/1.1" 200' in line]) == 3
    for run_id in run_ids:
        assert len([line for line in lines if f'"GET /v1/runs/{run_id}/events HTTP/1.1"' in line]) == 1
