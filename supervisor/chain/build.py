"""The one place the governance chain is assembled, in order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from supervisor.audit.recorder import AuditRecorder
from supervisor.chain.approval import ApprovalInterceptor
from supervisor.chain.audit import AuditGate, AuditInterceptor
from supervisor.chain.base import CallState, Interceptor
from supervisor.chain.budget import BudgetInterceptor
from supervisor.chain.execute import execute
from supervisor.chain.idempotency import IdempotencyInterceptor
from supervisor.chain.lease import LeaseFence
from supervisor.chain.policy import PolicyInterceptor
from supervisor.chain.ratelimit import RateLimitInterceptor
from supervisor.chain.validate import ValidateInterceptor

__all__ = ["Chain", "build_chain"]

Chain = Callable[[CallState], Awaitable[dict[str, Any]]]


def build_chain(recorder: AuditRecorder) -> tuple[Chain, list[Interceptor]]:
    """audit → validate → policy → idempotency → rate limit → budget (reserve … settle) → approval → fence → audit
    gate → fence → execute. The lease fence (supervisor/chain/lease.py) stands right before each of the call's side
    effects a worker that lost its run must not make: its ``tool.allowed`` record, and the tool's run (the gate's
    write is an await a freeze may fall in). The steps before undo what they did when it refuses (a reservation
    released, an idempotency key freed)."""
    interceptors: list[Interceptor] = [
        AuditInterceptor(recorder),
        ValidateInterceptor(),
        PolicyInterceptor(),
        IdempotencyInterceptor(),
        RateLimitInterceptor(),
        BudgetInterceptor(),
        ApprovalInterceptor(),
        LeaseFence(),
        AuditGate(recorder),
        LeaseFence(),
    ]
    handler: Chain = execute
    for icpt in reversed(interceptors):
        handler = partial(icpt.__call__, next=handler)
    return handler, interceptors
