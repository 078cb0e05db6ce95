"""The governance chain's vocabulary: a call, an interceptor, ``next``.

The chain is an ordered list of small interceptors, each ``async (call, next)``,
built in exactly one function (``supervisor.chain.build.build_chain``). Adding a
check means adding one class. Interceptors record what they decided on the
``CallState`` (verdict, rule, reservation, cost); the audit interceptor turns
that into exactly one audit record per call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from supervisor.errors import StockadeError

__all__ = ["Binding", "CallState", "Interceptor", "Next", "emit_while_running", "through_cancel"]


@dataclass(frozen=True)
class Binding:
    """Who is calling, as the supervisor bound it to the socket (never from a frame)."""

    tenant_id: str
    run_id: str
    bundle: str
    bundle_version: str
    project_id: str | None = None
    user_id: str | None = None
    role: str = "member"
    key_id: str | None = None
    bundle_policy: Any = None  # the bundle's narrowing policy layer (supervisor.policy), or None
    bundle_tools: tuple[str, ...] | None = None  # globs from bundle.yaml ``tools``; None = not declared


@dataclass
class CallState:
    """One tool call travelling down the chain."""

    binding: Binding
    tool_name: str  # as the bundle spelled it; the validate step replaces a generic door by the call it makes
    raw_args: dict[str, Any]
    request_id: int | str | None = None
    idempotency_key: Any = None  # as given by the bundle (the validate step refuses a bad one), or None
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)

    # filled in along the chain
    tool: Any = None  # the supervisor.tools.base.Tool
    # ``mcp.call {server, tool, arguments}`` is resolved by the validate step to the call it stands for,
    # ``mcp.<server>.<tool> {arguments}``: tool_name and raw_args become that call's, called_as keeps "mcp.call".
    called_as: str | None = None
    # More names of this call (the tool's ``aliases``: every MCP call is also "mcp.call"): a tool glob that matches
    # any of them matches the call (policy rules of both layers, order rules, bundle.yaml tools, prices)
    aliases: tuple[str, ...] = ()
    tool_ctx: Any = None  # the supervisor.tools.base.ToolContext handed to tool.run
    stream: Any = False  # True: the bundle iterates chunks (ctx.stream); not a bool: refused by the validate step
    args: Any = None  # the validated ToolArgs
    args_hash: str | None = None  # sha256 of canonical JSON of the raw args
    resource: str | None = None  # resolved resource the policy matched on
    policy_version: str | None = None
    verdict: str | None = None  # allow deny require_approval delay downgrade
    rule_id: str | None = None
    reason: str | None = None
    dedupe_key: str | None = None
    deduped: bool = False
    reservation_id: str | None = None
    reserved_micro: int = 0
    cost_micro: int = 0
    approval_id: str | None = None
    outcome: str | None = None  # audit kind: tool.allowed tool.denied tool.deduped rate.limited ...
    error: Any = None  # the StockadeError that ended the call, if any
    extra: dict[str, Any] = field(default_factory=dict)  # interceptor-private notes (go into audit detail)

    # provided by the supervisor when it builds the call
    services: Any = None  # supervisor.services.Services: settings + every store port + tool registry
    emit: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None  # append an event to the run's stream
    announced: Awaitable[Any] | None = None  # the stored tool.call event; the audit gate awaits it before execute
    # None: every step finishes before the chain returns. A list (the run session's calls): steps may
    # leave work here that need not hold up the answer (the outcome audit record); the caller runs it
    # right after replying, before the call counts as finished.
    after_reply: list[Callable[[], Awaitable[Any]]] | None = None
    # The run's side-effecting calls so far, per resource: resource -> (last derived key base, epoch). Given
    # by the run session (one dict per run); None: derived keys carry no epoch (supervisor.chain.idempotency).
    run_marks: dict[str, tuple[str, int]] | None = None

    def names(self) -> tuple[str, ...]:
        """Every name a tool glob is matched against: the call's own first, then its aliases."""
        return (self.tool_name, *self.aliases) if isinstance(self.tool_name, str) else ()


Next = Callable[[CallState], Awaitable[dict[str, Any]]]


class Interceptor(Protocol):
    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]: ...


async def emit_while_running(call: CallState, type_: str, data: dict[str, Any]) -> None:
    """An event of the call's run; dropped if the store refuses it because the run already ended
    (canceled or timed out while the call was still settling): the call's outcome stands."""
    if call.emit is None:
        return
    try:
        await call.emit(type_, data)
    except StockadeError as exc:
        if exc.code != "conflict":
            raise


async def through_cancel(coro: Awaitable[Any]) -> Any:
    """Await ``coro`` to its end even if the caller is canceled meanwhile (the caller then still waits for
    it, and is canceled after). For audit writes: a cancel landing inside one drops the record or not,
    unknowably (the store may have committed it), so it can be neither lost nor written again."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise
