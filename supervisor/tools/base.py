"""What every tool is: a typed argument model, a risk tier, a price, a runner.

Tools run in the supervisor (never in the sandbox) and hold the secrets the
sandbox never sees. The governance chain validates ``args`` against
``args_model`` (bad arguments -> ``input.invalid``, or ``input.too_large`` past a
``max_chars`` limit, before policy), asks ``resource`` for the *resolved*
resource the policy matches on, reserves ``estimate_micro`` against the
budgets, then calls ``run``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

__all__ = ["TOO_LARGE", "Emit", "Tool", "ToolArgs", "ToolContext", "ToolResult", "max_chars"]

# emit(type, data) appends an event to the run's stream, e.g. emit("message.delta", {"channel": "answer", "text": "Hi"})
Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class ToolArgs(BaseModel):
    """Base of every tool's argument model: strict, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# The error type of an argument over a size limit: the validate step answers ``input.too_large`` for
# it, where any other bad argument is ``input.invalid`` (``max_length`` would be one of those).
TOO_LARGE = "too_large"


def max_chars(limit: int) -> AfterValidator:
    """A string argument's size limit, refused as ``input.too_large``: ``Annotated[str, max_chars(n)]``."""

    def check(value: str) -> str:
        if len(value) > limit:
            raise PydanticCustomError(TOO_LARGE, "longer than {limit} characters", {"limit": limit})
        return value

    return AfterValidator(check)


@dataclass
class ToolContext:
    tenant_id: str
    run_id: str
    user_id: str | None
    project_id: str | None
    emit: Emit
    services: Any = None  # supervisor.services.Services (settings, stores); typed loosely to avoid a cycle
    stream_chunk: Callable[[dict[str, Any]], Awaitable[None]] | None = None  # to the bundle, for async iteration
    llm_prices: Any = None  # the tenant policy's ``llm_prices`` overrides, if any
    call: Any = None  # the chain's CallState, for tools that re-check policy on later hops (redirects)
    # What the call has cost so far, set by a tool that spends as it goes (a streaming LLM call) when it
    # is cancelled mid-way (the run was canceled or timed out): settlement charges it, not 0.
    spent_micro: int = 0


@dataclass(frozen=True)
class ToolResult:
    result: dict[str, Any]
    cost_micro: int = 0  # actual cost, settled against the reservation
    usage: dict[str, Any] = field(default_factory=dict)


class Tool(Protocol):
    name: ClassVar[str]
    args_model: ClassVar[type[ToolArgs]]
    risk: ClassVar[str]  # "low" | "medium" | "high"
    default_price_micro: ClassVar[int]
    timeout_s: ClassVar[float]
    side_effects: ClassVar[bool]  # True: derived idempotency keys dedupe repeats within a run
    # optional ``repeats_are_new: ClassVar[bool]``: a repeat is one step more (storage.rollback), never a
    # duplicate - it still counts as acting on its resource (supervisor.chain.idempotency._derived_key)

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        """The resolved resource the policy matches (normalised URL, resolved storage path), or None."""
        ...

    def estimate_micro(self, args: ToolArgs, ctx: ToolContext) -> int | None:
        """Worst-case cost in micro-USD, or None to use the policy/default price."""
        ...

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult: ...
