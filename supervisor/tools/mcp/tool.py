"""The tools bundles call: ``mcp.<server>.<tool>`` (one per pinned tool) and ``mcp.call``.

``mcp.<server>.<tool>`` is resolved per call from the tenant's pins, so the
policy matches the full name (``mcp.github.*``) and the arguments are checked
against the *pinned* input schema in the validate step, before policy.

``mcp.call {server, tool, arguments}`` is the contract's spelling of the same
call (``name`` may stand for ``tool``: a bundle's ``ctx.call("mcp.call", ...)``
cannot pass a keyword named ``tool``). It is a door, not a tool of its own: the
validate step turns it into the call it stands for (``stands_for``), so both
spellings are one call from there on - checked against the pinned schema before
policy, judged by rules on ``mcp.<server>.<tool>`` *and* on ``mcp.call`` (every
MCP tool has the alias ``mcp.call``), with the MCP arguments as ``args``,
priced, rate-limited, deduplicated and audited alike (the audit record names
``mcp.<server>.<tool>``, with ``called_as: mcp.call`` when spelled so).

Both are ``risk="high"`` with side effects (idempotency derives a key from the
arguments): an MCP tool can do anything its server can.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

from pydantic import AliasChoices, ConfigDict, Field, model_validator

from supervisor.errors import StockadeError
from supervisor.tools.base import ToolArgs, ToolContext, ToolResult
from supervisor.tools.mcp._schema import check_arguments
from supervisor.tools.mcp.service import McpService
from supervisor.tools.mcp.store import SERVER_NAME, TOOL_NAME, McpServer, PinnedTool

__all__ = ["McpCallArgs", "McpCallTool", "McpTool", "McpToolArgs", "make_resolver", "resource_for"]

PREFIX = "mcp."
DEFAULT_PRICE_MICRO = 100  # $0.0001 per call, like http.request: a real outbound request; policies re-price it
TIMEOUT_S = 60.0


def resource_for(server: str, tool: str) -> str:
    return f"mcp://{server}/{tool}"


class McpToolArgs(ToolArgs):
    """Any JSON object; subclasses made per pinned definition check it against that ``input_schema``."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    mcp_tool: ClassVar[str] = ""
    mcp_schema: ClassVar[dict[str, Any] | None] = None
    mcp_hash: ClassVar[str] = ""

    @model_validator(mode="after")
    def _pinned_schema(self) -> McpToolArgs:
        cls = type(self)
        if cls.mcp_schema is not None:
            check_arguments(cls.mcp_schema, dict(self.model_extra or {}), tool=cls.mcp_tool, def_hash=cls.mcp_hash)
        return self


_ARG_MODELS: OrderedDict[tuple[str, str], type[McpToolArgs]] = OrderedDict()


def _args_model(pin: PinnedTool) -> type[McpToolArgs]:
    """One model class per (name, pinned hash), cached: building a pydantic model costs milliseconds."""
    key = (pin.full_name, pin.def_hash)
    cls = _ARG_MODELS.get(key)
    if cls is None:
        schema = pin.definition.get("input_schema")
        cls = type("McpArgs", (McpToolArgs,), {
            "__module__": __name__, "mcp_tool": pin.full_name, "mcp_hash": pin.def_hash,
            "mcp_schema": schema if isinstance(schema, dict) else {},
        })
        _ARG_MODELS[key] = cls
        if len(_ARG_MODELS) > 1024:
            _ARG_MODELS.popitem(last=False)
    else:
        _ARG_MODELS.move_to_end(key)
    return cls


class McpTool:
    """One pinned tool of one tenant's server, as resolved for one call."""

    # Whichever spelling the bundle used, a rule, an order rule, a bundle.yaml ``tools`` glob or a price written on
    # "mcp.call" applies to every MCP call (supervisor/README.md, "One call, every name").
    aliases: ClassVar[tuple[str, ...]] = ("mcp.call",)
    risk: ClassVar[str] = "high"
    default_price_micro: ClassVar[int] = DEFAULT_PRICE_MICRO
    timeout_s: ClassVar[float] = TIMEOUT_S
    side_effects: ClassVar[bool] = True

    def __init__(self, service: McpService, server: McpServer, pin: PinnedTool) -> None:
        self.name = pin.full_name
        self.args_model: type[ToolArgs] = _args_model(pin)
        self.description = pin.definition.get("description")
        self._service = service
        self._server = server.name
        self._tool = pin.name
        self._hash = pin.def_hash

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        return resource_for(self._server, self._tool)

    def estimate_micro(self, args: ToolArgs, ctx: ToolContext) -> int | None:
        return None

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        arguments = dict(args.model_extra or {})
        result = await self._service.call(ctx.tenant_id, self._server, self._tool, arguments, checked_hash=self._hash)
        return ToolResult(result=result)


class McpCallArgs(ToolArgs):
    server: str = Field(pattern=SERVER_NAME.pattern)
    # ``name`` is accepted too: the in-sandbox ``ctx.call(tool, **args)`` cannot also take a ``tool=`` keyword.
    tool: str = Field(pattern=TOOL_NAME.pattern, validation_alias=AliasChoices("tool", "name"))
    arguments: dict[str, Any] = Field(default_factory=dict)


class McpCallTool:
    name: ClassVar[str] = "mcp.call"
    args_model: ClassVar[type[ToolArgs]] = McpCallArgs
    risk: ClassVar[str] = "high"
    default_price_micro: ClassVar[int] = DEFAULT_PRICE_MICRO
    timeout_s: ClassVar[float] = TIMEOUT_S
    side_effects: ClassVar[bool] = True

    def __init__(self, service: McpService) -> None:
        self._service = service

    def stands_for(self, args: ToolArgs) -> tuple[str, dict[str, Any]]:
        """The call this one is another spelling of: ``mcp.<server>.<tool>`` with the MCP arguments."""
        assert isinstance(args, McpCallArgs)
        return f"{PREFIX}{args.server}.{args.tool}", dict(args.arguments)

    async def target(self, args: ToolArgs, tenant_id: str) -> McpTool:
        """The tool of ``stands_for``. Not through the registry: an MCP tool's own name keeps its case
        (``getUser``), which no name a bundle spells may have, so mcp.call is the one door to such tools."""
        assert isinstance(args, McpCallArgs)
        srv, pin = await self._service.pinned(tenant_id, args.server, args.tool)
        return McpTool(self._service, srv, pin)

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        assert isinstance(args, McpCallArgs)
        return resource_for(args.server, args.tool)

    def estimate_micro(self, args: ToolArgs, ctx: ToolContext) -> int | None:
        return None

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        assert isinstance(args, McpCallArgs)
        result = await self._service.call(ctx.tenant_id, args.server, args.tool, dict(args.arguments))
        return ToolResult(result=result)


def make_resolver(service: McpService) -> Any:
    """``resolver(name, tenant_id) -> Tool`` for the registry prefix ``mcp.``."""

    async def resolve(name: str, tenant_id: str) -> McpTool:
        rest = name[len(PREFIX):] if name.startswith(PREFIX) else ""
        server, dot, tool = rest.partition(".")
        if not dot or not SERVER_NAME.fullmatch(server) or not TOOL_NAME.fullmatch(tool):
            raise StockadeError("tool.unknown", f"no tool named {name!r} (MCP tools are mcp.<server>.<tool>)")
        srv, pin = await service.pinned(tenant_id, server, tool)
        return McpTool(service, srv, pin)

    return resolve
