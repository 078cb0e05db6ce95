"""``echo``: returns its arguments. For diagnostics and latency checks."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ConfigDict

from supervisor.tools.base import ToolArgs, ToolContext, ToolResult

__all__ = ["EchoTool"]


class EchoArgs(ToolArgs):
    # echo accepts any JSON arguments; they come back unchanged
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class EchoTool:
    name: ClassVar[str] = "echo"
    args_model: ClassVar[type[ToolArgs]] = EchoArgs
    risk: ClassVar[str] = "low"
    default_price_micro: ClassVar[int] = 0
    timeout_s: ClassVar[float] = 10.0
    side_effects: ClassVar[bool] = False

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        return None

    def estimate_micro(self, args: ToolArgs, ctx: ToolContext) -> int | None:
        return None

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        data: dict[str, Any] = dict(args.model_extra or {})
        return ToolResult(result=data)
