"""Writes one audit record through the AuditLog port, sealed with the supervisor's key."""

from __future__ import annotations

import time
from typing import Any

from supervisor.audit.chain import Sealer
from supervisor.errors import StockadeError
from supervisor.metrics import SupervisorMetrics
from supervisor.storable import scrub_nul
from supervisor.stores.ports import AuditLog
from supervisor.stores.records import AuditRecord

__all__ = ["MAX_TOOL_CHARS", "AuditRecorder"]

# A tool name that is valid is at most 128 characters; a bundle may send any string up to a frame (1 MB) as
# one, refused as tool.invalid. Its record keeps as much of it as the run's events do (session.py), not all:
# found by a walkthrough, a 40,000-character name made a 40 KB record per refused call.
MAX_TOOL_CHARS = 1024


class AuditRecorder:
    def __init__(self, log: AuditLog, sealer: Sealer, metrics: SupervisorMetrics | None = None) -> None:
        self.log = log
        self.sealer = sealer
        self.metrics = metrics  # counts each record written, by kind (stockade_governance_decisions_total)

    async def record(
        self, tenant_id: str, kind: str, *, run_id: str | None = None, tool: str | None = None,
        args_hash: str | None = None, rule_id: str | None = None, policy_version: str | None = None,
        code: str | None = None, cost_micro: int = 0, detail: dict[str, Any] | None = None,
    ) -> AuditRecord:
        if isinstance(tool, str) and len(tool) > MAX_TOOL_CHARS:
            tool = tool[:MAX_TOOL_CHARS]
        fields = {
            "ts": round(time.time(), 6), "kind": kind, "run_id": run_id, "tool": tool, "args_hash": args_hash,
            "rule_id": rule_id, "policy_version": policy_version, "code": code, "cost_micro": int(cost_micro),
            "detail": detail or {},
        }
        fields = scrub_nul(fields)  # a bundle's tool name or key may carry one; every store must take the record
        try:
            written = await self.log.append(tenant_id, fields, self.sealer.for_tenant(tenant_id))
        except StockadeError as exc:
            if exc.code == "audit.unavailable":
                raise
            raise StockadeError("audit.unavailable", f"audit record could not be written ({exc.code})") from exc
        except Exception as exc:
            raise StockadeError("audit.unavailable", "audit record could not be written") from exc
        if self.metrics is not None:
            self.metrics.decision(kind)
        return written
