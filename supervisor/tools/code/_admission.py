"""Who may start a ``code.run`` sandbox on this process right now.

Two counts, both kept in this process because what they protect is this process's:

- per tenant, at most ``STOCKADE_CODE_RUN_MAX_PER_TENANT`` sandboxes at once (``rate.limited``,
  ``limit: code_run_concurrency``): a bundle firing hundreds of concurrent ``code.run`` calls took
  every uid of the pool, and every other tenant's ``code.run`` and runs on this node failed;
- for every tenant together, never the uids the runs of this process may still need: the pool
  (``STOCKADE_SANDBOX_UID_BASE``/``_COUNT``) is one per worker process, and its runs and warm slots
  hold at most ``worker_concurrency + sandbox_warm_pool`` of it, so ``code.run`` gets the rest and no
  more (``sandbox.unavailable``, retryable).

Neither is shared between processes: a tenant whose runs are spread over N workers may have N times
the cap running in all (see supervisor/README.md, "Tenant quotas"). The event loop is the lock: a
check and its count change have no ``await`` between them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from supervisor.errors import StockadeError

__all__ = ["CodeAdmission", "admission_for", "busy"]

log = logging.getLogger("stockade.tools")


def busy(detail: str) -> StockadeError:
    """The node has no sandbox to spare now: ``sandbox.unavailable``, but worth retrying (the table's row
    says not retryable, for the backend being broken: no bwrap, no seccomp - that does not heal by itself)."""
    return StockadeError("sandbox.unavailable", detail, retryable=True)


class CodeAdmission:
    def __init__(self, per_tenant: int, max_total: int | None) -> None:
        self.per_tenant = per_tenant
        self.max_total = max_total  # None: no uid pool (not root): only the per-tenant cap
        self.total = 0
        self._by_tenant: dict[str, int] = {}

    def running(self, tenant_id: str) -> int:
        return self._by_tenant.get(tenant_id, 0)

    @contextlib.contextmanager
    def slot(self, tenant_id: str, call: Any = None) -> Iterator[None]:
        n = self._by_tenant.get(tenant_id, 0)
        if n >= self.per_tenant:
            if call is not None:  # named in the audit record, as the chain's own rate limits are
                call.extra["rate_limit"] = "code_run_concurrency"
            raise StockadeError(
                "rate.limited", f"code.run: {n} sandboxes of this tenant are already running on this node, the "
                "most it may have at once; retry when one has finished", limit="code_run_concurrency")
        if self.max_total is not None and self.total >= self.max_total:
            raise busy("code.run: no sandbox is free on this node right now; retry shortly")
        self._by_tenant[tenant_id] = n + 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            left = self._by_tenant[tenant_id] - 1
            if left:
                self._by_tenant[tenant_id] = left
            else:
                del self._by_tenant[tenant_id]  # no entry per tenant ever seen


def admission_for(services: Any) -> CodeAdmission:
    """This process's admission, made on first use: next to the uid pool it guards (``services.extras``,
    one per node), so every ``CodeRunTool`` instance of the node shares it."""
    admission = services.extras.get("code_admission")
    if admission is None:
        s = services.settings
        pool = services.extras.get("uid_pool")
        max_total = None
        if pool is not None:
            max_total = max(0, pool.count - (s.worker_concurrency + s.sandbox_warm_pool))
            if max_total == 0:
                log.warning("code.run gets no sandbox uid on this node: STOCKADE_SANDBOX_UID_COUNT (%d) leaves none "
                            "beside the runs' and warm slots' (%d); raise it", pool.count,
                            s.worker_concurrency + s.sandbox_warm_pool)
        admission = services.extras["code_admission"] = CodeAdmission(s.code_run_max_per_tenant, max_total)
    return admission
