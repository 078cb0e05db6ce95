"""Prometheus metrics (one registry per app, so tests can build several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("stockade_http_requests_total", "HTTP requests", ["method", "status"], registry=self.registry)
        self.latency = Histogram("stockade_http_request_seconds", "HTTP request latency", ["method"], registry=self.registry)
        self.runs_created = Counter("stockade_runs_created_total", "Runs created", registry=self.registry)
        self.sse_subscribers = Gauge("stockade_sse_subscribers", "Open SSE streams", registry=self.registry)
        self.queue_depth = Gauge("stockade_queue_depth", "Runs waiting in the queue", registry=self.registry)
