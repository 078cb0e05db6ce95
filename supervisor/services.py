"""The wiring: settings plus one adapter per port, chosen once at start-up and injected.

``open_services(settings)`` (supervisor.factory) builds it; tests build it the
same way against SQLite/memory or PostgreSQL/Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from supervisor.key_checks import KeyChecks
from supervisor.metrics import SupervisorMetrics
from supervisor.settings import Settings
from supervisor.stores.ports import (
    ApprovalStore,
    AuditLog,
    BundleStore,
    EventBus,
    IdempotencyStore,
    Ledger,
    PolicyStore,
    RateLimiter,
    RunQueue,
    RunStore,
    TenantStore,
)

__all__ = ["Services"]


@dataclass
class Services:
    settings: Settings
    tenants: TenantStore
    runs: RunStore
    events: EventBus
    queue: RunQueue
    audit: AuditLog
    approvals: ApprovalStore
    idempotency: IdempotencyStore
    ledger: Ledger
    rate: RateLimiter
    bundles: BundleStore
    policies: PolicyStore
    kb: Any = None  # knowledge-base store (supervisor.stores.*.kb)
    # per-user history of velocity rules shared by every node (Redis); None: this process's own is exact
    # (the embedded stack is one process) - supervisor/chain/policy.py
    velocity: Any = None
    tools: Any = None  # supervisor.tools.registry.ToolRegistry
    extras: dict[str, Any] = field(default_factory=dict)
    key_checks: KeyChecks = field(default_factory=KeyChecks)  # open streams' key re-checks, shared per key
    closers: list[Any] = field(default_factory=list)  # async callables run by close()
    metrics: SupervisorMetrics = field(default_factory=SupervisorMetrics)  # this node's own registry (supervisor/metrics.py)

    async def close(self) -> None:
        for close in reversed(self.closers):
            await close()
        self.closers.clear()
