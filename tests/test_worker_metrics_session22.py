"""Worker-side metrics (session 22), below the HTTP stack: the decision counter at the audit recorder, the
closed set of kinds it labels with, STOCKADE_WORKER_METRICS_ADDR, and the worker's /metrics listener."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.audit import AuditRecorder, Sealer
from supervisor.chain.audit import _KIND_BY_CODE
from supervisor.errors import StockadeError
from supervisor.metrics import DECISION_KINDS, SupervisorMetrics, exposition, serve_metrics
from supervisor.settings import SettingsError, load_settings
from tests import test_cli as _cli_tests
from tests.contract import conftest as _contract
from tests.contract._helpers import store

sql_target = _contract.sql_target  # SQLite and PostgreSQL
sql_db = _contract.sql_db
env = _cli_tests.env  # a clean STOCKADE_ environment

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
KEY = Sealer(b"test-audit-key-0123456789abcdef")  # the e2e nodes' key: they may share the database


def _decisions(m: SupervisorMetrics) -> dict[str, float]:
    fams = {f.name: f for f in text_string_to_metric_families(exposition(*m.registries(worker=True)).decode())}
    return {s.labels["kind"]: s.value for s in fams["stockade_governance_decisions"].samples}


# --------------------------------------------------------------------------- the recorder


async def test_each_record_written_counts_once_by_kind_and_a_kind_not_ours_counts_as_other(sql_db):
    tid = await sql_db.new_tenant()
    m = SupervisorMetrics()
    rec = AuditRecorder(store(sql_db, "AuditLog"), KEY, m)
    await rec.record(tid, "tool.allowed", run_id="run_1", tool="tenant.tool_zq7")
    await rec.record(tid, "tool.denied", run_id="run_1", tool="tenant.tool_zq7", code="policy.denied")
    await rec.record(tid, "tool.denied", run_id="run_1", tool="x")
    await rec.record(tid, "tenant.chosen_kind_zq7", run_id="run_1")  # never a label of its own
    assert _decisions(m) == {"tool.allowed": 1, "tool.denied": 2, "other": 1}
    text = exposition(*m.registries(worker=True)).decode()
    assert "zq7" not in text and tid not in text and "run_1" not in text


class _AwayLog:
    """An AuditLog whose store is away: every append fails."""

    async def append(self, tenant_id: str, fields: dict[str, Any], sealer: Any) -> Any:
        raise ConnectionError("the store is away")


async def test_a_record_that_could_not_be_written_is_not_counted():
    m = SupervisorMetrics()
    rec = AuditRecorder(_AwayLog(), KEY, m)  # type: ignore[arg-type]
    with pytest.raises(StockadeError) as err:
        await rec.record("ten_1", "tool.allowed")
    assert err.value.code == "audit.unavailable"
    assert _decisions(m) == {}


# Every kind the code writes: the literals handed to the recorder (and to the chain's _write/_safe), the
# outcomes the chain's steps set, the kinds refusals map to. A kind added without being listed in
# DECISION_KINDS would count as "other": this says so instead.
_KIND_LITERAL = re.compile(r"""(?:\.record\(\s*[\w.]+,\s*|_record\(rt,\s*p,\s*|_write\([^,]+,\s*call,\s*|_safe\(call,\s*|"""
                           r"""call\.outcome\s*=\s*)f?"([a-z_.{}]+)\"""")


def test_every_kind_the_code_writes_is_a_label_of_its_own():
    found: set[str] = set()
    for path in [*(ROOT / "supervisor").rglob("*.py"), *(ROOT / "app").rglob("*.py")]:
        text = path.read_text()
        found |= set(_KIND_LITERAL.findall(text))
        for line in re.findall(r"\bkind = (.*)", text):  # kind = "tool.deduped" if call.deduped else "tool.completed"
            found |= {k for k in re.findall(r'"([a-z_.{}]+)"', line) if "." in k}
    found = {k for k in found if "{" not in k} | {"approval.approved", "approval.rejected"}  # f"approval.{status}"
    found |= set(_KIND_BY_CODE.values())
    assert {"tool.allowed", "tool.denied", "peer.rejected", "key.created", "mcp.tool.approved", "rate.limited",
            "approval.vote", "tool.completed", "tool.deduped"} <= found  # the scan sees them
    assert found - DECISION_KINDS == set()


def test_runs_finished_labels_are_terminal_statuses_or_other():
    m = SupervisorMetrics()
    for status in ("succeeded", "failed", "failed", "canceled", "timed_out", "running"):
        m.run_finished(status, 1.5)
    fams = {f.name: f for f in text_string_to_metric_families(exposition(*m.registries(worker=True)).decode())}
    assert {s.labels["status"]: s.value for s in fams["stockade_runs_finished"].samples} == {
        "succeeded": 1, "failed": 2, "canceled": 1, "timed_out": 1, "other": 1}


def test_created_samples_are_dropped_per_exposition_not_for_the_process():
    m = SupervisorMetrics()
    m.decision("tool.allowed")
    assert b"_created" not in exposition(*m.registries(worker=True))
    other = SupervisorMetrics()  # another registry, rendered the library's way, keeps them: nothing global changed
    other.decision("tool.allowed")
    assert b"stockade_governance_decisions_created" in generate_latest(other.governance)
    c = Counter("unrelated_total", "x", registry=other.governance)
    c.inc()
    assert b"unrelated_created" in generate_latest(other.governance)


# --------------------------------------------------------------------------- the setting


@pytest.mark.parametrize("value", ["9100", ":9100", "localhost", "127.0.0.1:0", "127.0.0.1:65536", "h:x",
                                   "::1:9100", "[::1]", "a b:9100", "http://h:9100"])
def test_a_bad_metrics_address_is_refused_naming_the_variable(env, monkeypatch, value):
    monkeypatch.setenv("STOCKADE_WORKER_METRICS_ADDR", value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert str(err.value).startswith("invalid setting STOCKADE_WORKER_METRICS_ADDR: "), err.value


@pytest.mark.parametrize(("value", "listen"), [("127.0.0.1:9100", ("127.0.0.1", 9100)),
                                               ("[::1]:9100", ("::1", 9100)),
                                               ("metrics.local:65535", ("metrics.local", 65535))])
def test_a_metrics_address_is_host_and_port(env, monkeypatch, value, listen):
    monkeypatch.setenv("STOCKADE_WORKER_METRICS_ADDR", value)
    assert load_settings().worker_metrics_listen == listen


def test_unset_means_no_listener(env):
    s = load_settings()
    assert s.worker_metrics_addr is None and s.worker_metrics_listen is None


# --------------------------------------------------------------------------- the listener


async def _ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    except ConnectionError:  # the listener dropped the connection while it was still being written to
        return b""
    finally:
        writer.close()


async def test_the_listener_serves_metrics_and_nothing_else():
    m = SupervisorMetrics()
    m.decision("tool.denied")
    server = await serve_metrics("127.0.0.1", 0, *m.registries(worker=True))
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(20):
            stalled = await asyncio.open_connection("127.0.0.1", port)  # sends nothing: holds up no one
            ok = await _ask(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b'stockade_governance_decisions_total{kind="tool.denied"} 1.0' in ok
            for path in (b"/", b"/metricsx", b"/other", b"/metrics/x"):
                assert (await _ask(port, b"GET " + path + b" HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 "), path
            assert (await _ask(port, b"DELETE /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
            assert await _ask(port, b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 70_000) == b""  # head too large
            stalled[1].close()
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(OSError):  # closed: nothing listens there any more
        await _ask(port, b"GET /metrics HTTP/1.1\r\n\r\n")


async def test_the_listener_refuses_an_address_it_cannot_take():
    first = await serve_metrics("127.0.0.1", 0, SupervisorMetrics().governance)
    try:
        with pytest.raises(OSError):
            await serve_metrics("127.0.0.1", first.sockets[0].getsockname()[1], SupervisorMetrics().governance)
    finally:
        first.close()
        await first.wait_closed()
