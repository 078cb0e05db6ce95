"""A ``ToolContext`` for calling a tool directly in a test: it records what the tool emits and streams."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from supervisor.tools.base import ToolContext

__all__ = ["Recorder", "make_tool_ctx"]


@dataclass
class Recorder:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)

    async def emit(self, type: str, data: dict[str, Any]) -> None:
        self.events.append((type, dict(data)))

    async def stream_chunk(self, chunk: dict[str, Any]) -> None:
        self.chunks.append(dict(chunk))

    def deltas(self, channel: str | None = None) -> list[str]:
        return [d["text"] for t, d in self.events if t == "message.delta" and channel in (None, d["channel"])]

    def channels(self) -> list[str]:
        return [d["channel"] for t, d in self.events if t == "message.delta"]


def make_tool_ctx(
    settings: Any,
    *,
    stream_chunks: bool = True,
    llm_prices: Any = None,
    tenant_id: str = "t_test",
    run_id: str = "r_test",
) -> tuple[ToolContext, Recorder]:
    rec = Recorder()
    ctx = ToolContext(
        tenant_id=tenant_id,
        run_id=run_id,
        user_id="u_test",
        project_id=None,
        emit=rec.emit,
        services=SimpleNamespace(settings=settings),
        stream_chunk=rec.stream_chunk if stream_chunks else None,
    )
    if llm_prices is not None:
        ctx.llm_prices = llm_prices  # type: ignore[attr-defined]  # the lead adds this field to ToolContext
    return ctx, rec
