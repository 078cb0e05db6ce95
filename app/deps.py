"""Request dependencies: the runtime, the authenticated principal, role checks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request

from supervisor.errors import StockadeError
from supervisor.tenancy import Principal, authenticate, key_failure

__all__ = ["KEY_RECHECK_S", "MAX_ID", "STORE_AWAY_GRACE_S", "KeyWatch", "key_recheck", "principal", "require_role",
           "runtime"]

MAX_ID = 2**63 - 1  # the largest sequence number / row id any store holds (PostgreSQL bigint)
# An open SSE stream or Socket.IO connection is cut off within this bound once its key is revoked. Read at call
# time (tests shorten it). Each stream checks its key every 4/5 of it, however many events flow, and takes
# the result of another stream's lookup of the same key that started at most 1/5 of it ago
# (supervisor.key_checks): one store lookup per key, not per stream.
KEY_RECHECK_S = 5.0


def key_recheck() -> tuple[float, float]:
    """(how often an open stream checks its key, how old a shared lookup it may take) - together KEY_RECHECK_S."""
    return KEY_RECHECK_S * 0.8, KEY_RECHECK_S * 0.2


# A key re-check the store cannot answer (PostgreSQL restarting, a failover) does not end a stream for this long:
# its live tail still serves from the bus, and a revocation is a write to that same store. Past it the stream
# closes, failing closed (a node cut off from the store longer could miss a revocation made elsewhere).
STORE_AWAY_GRACE_S = 30.0


class KeyWatch:
    """An open stream's key re-check (SSE and Socket.IO alike): ``failure()`` is None while the key still
    authenticates, or while the store has been away for less than ``STORE_AWAY_GRACE_S``; else the error
    the stream closes with (``auth.invalid`` once revoked). Was: any failed lookup closed every stream of
    every replica within one re-check of a 4 s PostgreSQL outage, the events still flowing through Redis."""

    def __init__(self, services: Any, principal: Principal) -> None:
        self.services, self.principal = services, principal
        self.away_since: float | None = None

    async def failure(self) -> StockadeError | None:
        err = await key_failure(self.services, self.principal, max_age=key_recheck()[1])
        if err is None or not err.code.endswith(".unavailable"):
            self.away_since = None
            return err
        now = time.monotonic()
        if self.away_since is None:
            self.away_since = now
        return err if now - self.away_since >= STORE_AWAY_GRACE_S else None


def runtime(request: Request) -> Any:
    return request.app.state.runtime


async def principal(request: Request) -> Principal:
    if len(request.headers.getlist("authorization")) > 1:
        # RFC 9110 allows it once: the first authenticated, a proxy reading the last saw another principal
        raise StockadeError("auth.invalid", "send one Authorization header")
    p = await authenticate(request.app.state.runtime.services, request.headers.get("authorization"))
    request.state.principal = p
    return p


def require_role(*roles: str) -> Callable[..., Any]:
    async def dep(p: Principal = Depends(principal)) -> Principal:
        if p.role not in roles:
            raise StockadeError("auth.forbidden", f"this needs a key with role {' or '.join(roles)}")
        return p

    return dep


def require_tenant_wide(*roles: str) -> Callable[..., Any]:
    """``require_role`` for what acts on the whole tenant (its policy, budgets, bundles, MCP servers, users,
    projects, ledger): a key bound to a user or a project is refused, whatever its role."""
    role_dep = require_role(*roles)

    async def dep(p: Principal = Depends(role_dep)) -> Principal:
        if p.bound:
            raise StockadeError("auth.forbidden", "this key is bound to a user or project; this needs an unbound key")
        return p

    return dep


READ_ROLES = ("admin", "member", "approver", "viewer")
WRITE_ROLES = ("admin", "member")
