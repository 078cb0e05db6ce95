"""Prometheus metrics of the governance work: decisions, runs ended, runs running (one registry per Services).

Labels are closed sets owned by supervisor code - never a tenant, tool, bundle or run: a tenant's names would
add a series each (unbounded memory and scrape size) and show one tenant's activity to whoever scrapes.
``stockade serve`` shows these on its ``/metrics`` (app/routes/health.py), ``stockade api`` the governance
decisions it records (approval votes, admin changes); ``stockade worker`` on a listener of its own
(``serve_metrics``) when ``STOCKADE_WORKER_METRICS_ADDR`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from supervisor.errors import ERRORS
from supervisor.events import RunEmitter
from supervisor.stores.records import TERMINAL_STATUSES, Event

__all__ = ["DECISION_KINDS", "CountedEmitter", "SupervisorMetrics", "exposition", "serve_metrics"]

log = logging.getLogger("stockade.metrics")

# Every audit kind supervisor and app code writes (AuditRecorder.record's callers). Each is a literal of
# ours or an error code of the one table (session frames and chain refusals are recorded under their code);
# anything else - a kind added without being listed here - counts as "other", never as itself.
DECISION_KINDS = frozenset({
    "tool.allowed", "tool.completed", "tool.failed", "tool.canceled", "tool.denied", "tool.invalid",
    "tool.deduped", "tool.rejected", "approval.approved", "approval.rejected", "approval.vote", "approval.void",
    "peer.rejected", "policy.updated", "budget.updated", "key.created", "key.revoked", "member.added",
    "member.removed", "project.created", "user.created", "bundle.registered", "bundle.deleted",
    "mcp.server.registered", "mcp.server.refreshed", "mcp.server.deleted", "mcp.tool.approved",
}) | frozenset(ERRORS)

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class SupervisorMetrics:
    """Two registries: ``governance`` (audit records written: every node writes some - an API node its approval
    votes and admin changes) and ``worker`` (runs and sandboxes: only a node that runs them has any)."""

    def __init__(self) -> None:
        self.governance = CollectorRegistry()
        self.worker = CollectorRegistry()
        self.decisions = Counter("stockade_governance_decisions_total",
                                 "Audit records written, by kind (tool.allowed, tool.denied, approval.rejected...)",
                                 ["kind"], registry=self.governance)
        r = self.worker
        self.runs_finished = Counter("stockade_runs_finished_total", "Runs this worker ended, by terminal status",
                                     ["status"], registry=r)
        self.runs_active = Gauge("stockade_runs_active", "Runs running on this worker", registry=r)
        self.sandbox_start = Histogram("stockade_sandbox_start_seconds",
                                       "From a run's start to its sandbox's connection to the supervisor",
                                       ["pool"], buckets=_BUCKETS, registry=r)
        self.run_duration = Histogram("stockade_run_duration_seconds", "From a run's start to its end on this worker",
                                      buckets=_BUCKETS, registry=r)

    def registries(self, *, worker: bool) -> tuple[CollectorRegistry, ...]:
        """What a node shows: the governance series, and the worker ones where it runs runs."""
        return (self.governance, self.worker) if worker else (self.governance,)

    def decision(self, kind: str) -> None:
        self.decisions.labels(kind if kind in DECISION_KINDS else "other").inc()

    def run_finished(self, status: str, duration_s: float | None) -> None:
        self.runs_finished.labels(status if status in TERMINAL_STATUSES else "other").inc()
        if duration_s is not None:
            self.run_duration.observe(max(0.0, duration_s))


class CountedEmitter(RunEmitter):
    """The emitter of a run a worker carries (supervisor/runs/worker.py), counting the end it writes. A run
    canceled through the API was ended there (``finish`` finds it ended): it counts as canceled where it ran."""

    def __init__(self, metrics: SupervisorMetrics, *args: Any) -> None:
        super().__init__(*args)
        self.metrics = metrics
        self.started_mono: float | None = None  # when the run started here

    def sandbox_started(self, pool: str) -> None:
        if self.started_mono is not None:
            self.metrics.sandbox_start.labels(pool).observe(time.monotonic() - self.started_mono)

    async def finish(self, status: str, data: dict[str, Any], **fields: Any) -> Event | None:
        event = await super().finish(status, data, **fields)
        if event is not None or status == "canceled":
            self.metrics.run_finished(status, None if self.started_mono is None else time.monotonic() - self.started_mono)
        return event


class _WithoutCreated:
    """A registry's samples minus the ``<name>_created`` ones (series start times, one per counter and
    histogram series: they doubled the output). Per exposition, unlike prometheus_client's
    ``disable_created_metrics()``, which changes every registry of the process."""

    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self.registries = tuple(registries)

    def collect(self) -> Iterator[Metric]:
        for registry in self.registries:
            for metric in registry.collect():
                metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
                yield metric


def exposition(*registries: CollectorRegistry) -> bytes:
    """Prometheus text of ``registries``, in order, without ``_created`` samples."""
    return generate_latest(_WithoutCreated(registries))  # type: ignore[arg-type]


async def serve_metrics(host: str, port: int, *registries: CollectorRegistry) -> asyncio.AbstractServer:
    """A listener that answers ``GET /metrics`` (and HEAD) with ``registries``' text, and 404 to any other
    path, 405 to any other method. HTTP/1.0-style: one request per connection, read with bounds and a
    deadline, so a scraper that stalls holds nothing. Raises OSError when it cannot listen."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            body, status, ctype = b"not found\n", "404 Not Found", "text/plain; charset=utf-8"
            extra = ""
            if path == "/metrics":
                if method in ("GET", "HEAD"):
                    body, status, ctype = exposition(*registries), "200 OK", CONTENT_TYPE_LATEST
                else:
                    body, status, extra = b"method not allowed\n", "405 Method Not Allowed", "Allow: GET, HEAD\r\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
                         "Connection: close\r\n\r\n".encode("latin-1") + (b"" if method == "HEAD" else body))
            await asyncio.wait_for(writer.drain(), 10.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError, ConnectionError):
            pass  # a half request, an oversized head, a stalled client: dropped
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=16 * 1024)
    for sock in server.sockets:
        log.info("worker metrics on http://%s:%d/metrics", *sock.getsockname()[:2])
    return server
