"""The supervisor's tools by name. ``mcp.<server>.<tool>`` resolve through the MCP provider."""

from __future__ import annotations

import logging
import re
from typing import Any

from supervisor.errors import StockadeError
from supervisor.tools.base import Tool

__all__ = ["TOOL_NAME", "ToolRegistry", "default_registry"]

log = logging.getLogger("stockade.tools")

# Tool names are plain ASCII; look-alikes (``Echo``, ``ｅcho``, zero-width joiners, NUL) are refused, never normalised.
TOOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._prefixes: dict[str, Any] = {}  # "mcp." -> resolver(name, tenant_id) -> Tool

    def register(self, tool: Tool) -> None:
        self._tools[tool.name] = tool

    def register_prefix(self, prefix: str, resolver: Any) -> None:
        self._prefixes[prefix] = resolver

    def names(self) -> list[str]:
        return sorted(self._tools)

    def warm_up(self) -> None:
        """Let each tool that has one start its ``warm_up()``: loading, off the event loop, what its first call
        would otherwise load on it (the LLM SDKs). Called by nodes that run tools, never by CLI commands."""
        for tool in self._tools.values():
            warm_up = getattr(tool, "warm_up", None)
            if callable(warm_up):
                warm_up()

    async def get(self, name: Any, tenant_id: str) -> Tool:
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise StockadeError("input.invalid", "tool names are lower-case ASCII [a-z0-9_.-]")
        tool = self._tools.get(name)
        if tool is not None:
            return tool
        for prefix, resolver in self._prefixes.items():
            if name.startswith(prefix):
                return await resolver(name, tenant_id)
        raise StockadeError("tool.unknown", f"no tool named {name!r}")


def default_registry(settings: Any, services: Any = None) -> ToolRegistry:
    """Every built-in tool whose module is present."""
    from supervisor.tools.echo import EchoTool

    reg = ToolRegistry()
    reg.register(EchoTool())
    _optional(reg, "supervisor.tools.llm", "make_llm_tool", settings)
    for mod in ("supervisor.tools.http", "supervisor.tools.storage", "supervisor.tools.kb", "supervisor.tools.code"):
        _optional_many(reg, mod, settings)
    try:
        from supervisor.tools.mcp import install as install_mcp

        install_mcp(reg, settings, services)
    except ImportError:
        pass
    return reg


def _optional(reg: ToolRegistry, module: str, factory: str, settings: Any) -> None:
    try:
        mod = __import__(module, fromlist=[factory])
    except ImportError:
        log.info("tool module %s not available", module)
        return
    reg.register(getattr(mod, factory)(settings))


def _optional_many(reg: ToolRegistry, module: str, settings: Any) -> None:
    try:
        mod = __import__(module, fromlist=["tools"])
    except ImportError:
        log.info("tool module %s not available", module)
        return
    fn = getattr(mod, "tools", None)
    if fn is None:
        return
    try:
        items = fn(settings)
    except TypeError:
        items = fn()
    for tool in items:
        reg.register(tool)
