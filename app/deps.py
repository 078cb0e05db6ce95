"""Request dependencies: the runtime, the authenticated principal, role checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request

from supervisor.errors import StockadeError
from supervisor.tenancy import Principal, authenticate

__all__ = ["KEY_RECHECK_S", "MAX_ID", "key_recheck", "principal", "require_role", "runtime"]

MAX_ID = 2**63 - 1  # the largest sequence number / row id any store holds (PostgreSQL bigint)
# An open SSE stream or Socket.IO connection is cut off within this bound once its key is revoked. Read at call
# time (tests shorten it). Each stream checks its key every 4/5 of it, however many events flow, and takes
# the result of another stream's lookup of the same key that started at most 1/5 of it ago
# (supervisor.key_checks): one store lookup per key, not per stream.
KEY_RECHECK_S = 5.0


def key_recheck() -> tuple[float, float]:
    """(how often an open stream checks its key, how old a shared lookup it may take) - together KEY_RECHECK_S."""
    return KEY_RECHECK_S * 0.8, KEY_RECHECK_S * 0.2


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
