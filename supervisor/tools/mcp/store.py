"""What the supervisor remembers about a tenant's MCP servers: the servers and their pinned tools.

A *pinned* tool is the exact definition (name, description, input schema) an
admin approved, with its hash. A server may change a tool at any time (the
"rug pull": a harmless description becomes a prompt injection, a schema grows
a field that exfiltrates); a changed definition is never used until an admin
approves it again. One transition function, ``observe``, is the only way a
live definition reaches the store, so the rule lives in one place:

- unknown tool                          -> inserted ``quarantined`` (new tools need an approval too)
- approved, live hash == pinned hash    -> unchanged
- approved, live hash != pinned hash    -> ``quarantined``, live definition kept as ``pending``
- quarantined                           -> stays quarantined, ``pending`` follows the live definition

``approve`` pins ``pending`` (optionally only if it still has the hash the admin
reviewed) and sets ``approved``. Nothing un-quarantines by itself, not even a
server that reverts to the approved definition: oscillating definitions are
exactly what an admin should look at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from supervisor.audit.canonical import canonical, sha256_hex
from supervisor.errors import StockadeError

__all__ = [
    "APPROVED", "MAX_TOOLS_PER_SERVER", "McpServer", "McpStore", "PinnedTool", "QUARANTINED", "SERVER_NAME",
    "TOOL_NAME", "ToolDef", "check_server_name", "check_tool_name", "definition_hash",
]

SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# The MCP spec's recommended tool-name alphabet; anything else is not pinned (and so never callable).
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_TOOLS_PER_SERVER = 500

APPROVED = "approved"
QUARANTINED = "quarantined"


@dataclass(frozen=True)
class ToolDef:
    """The part of an MCP tool definition that is pinned and hashed."""

    name: str
    description: str | None
    input_schema: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}

    @property
    def hash(self) -> str:
        return definition_hash(self.as_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToolDef:
        return cls(name=d["name"], description=d.get("description"), input_schema=d.get("input_schema") or {})


@dataclass(frozen=True)
class McpServer:
    tenant_id: str
    name: str
    url: str  # normalised http(s) URL of the streamable-HTTP endpoint
    headers: dict[str, str]  # secrets the supervisor sends; never returned by the API
    created_at: float
    created_by: str | None = None  # API key id of the registering admin


@dataclass(frozen=True)
class PinnedTool:
    tenant_id: str
    server: str
    name: str
    definition: dict[str, Any]  # {name, description, input_schema}: what calls are checked against
    def_hash: str
    status: str  # "approved" | "quarantined"
    pinned_at: float
    approved_by: str | None  # key id; None for a tool that was never approved
    pending_definition: dict[str, Any] | None = None  # the changed (live) definition awaiting approval
    pending_hash: str | None = None
    changed_at: float | None = None  # when it was last quarantined

    @property
    def full_name(self) -> str:
        return f"mcp.{self.server}.{self.name}"


def definition_hash(definition: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``{name, description, input_schema}``."""
    try:
        return sha256_hex(canonical(definition))
    except (TypeError, ValueError):
        raise StockadeError("tool.failed", "the MCP server sent a tool definition that is not plain JSON") from None


def check_server_name(name: Any) -> str:
    if not isinstance(name, str) or not SERVER_NAME.fullmatch(name):
        raise StockadeError("input.invalid", "an MCP server name is 1-32 characters of [a-z0-9_-], starting with a letter or digit")
    return name


def check_tool_name(name: Any) -> str:
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise StockadeError("input.invalid", "an MCP tool name is 1-128 characters of [A-Za-z0-9_.-]")
    return name


class McpStore(Protocol):
    """Tenant-scoped; PostgreSQL enforces the scoping again with row-level security."""

    async def create_server(self, server: McpServer, tools: list[ToolDef], approved_by: str | None) -> list[PinnedTool]:
        """Insert the server and pin every tool ``approved``; ``conflict`` if the name exists, ``not_found`` for an unknown tenant."""
        ...

    async def get_server(self, tenant_id: str, name: str) -> McpServer | None: ...
    async def list_servers(self, tenant_id: str) -> list[McpServer]: ...
    async def delete_server(self, tenant_id: str, name: str) -> bool:
        """Remove the server and its pins; False if there was none."""
        ...

    async def replace_secrets(self, old: McpServer, url: str, headers: dict[str, str]) -> bool:
        """Set the server's stored URL and header values (same header names) if they are still ``old``'s;
        False if the server is gone or changed meanwhile (re-sealing under a new key: ``stockade secrets
        reseal``)."""
        ...

    async def list_tools(self, tenant_id: str, server: str) -> list[PinnedTool]: ...
    async def get_tool(self, tenant_id: str, server: str, tool: str) -> PinnedTool | None: ...
    async def get_pinned(self, tenant_id: str, server: str, tool: str) -> tuple[McpServer, PinnedTool] | None:
        """The tool and its server in one read (the call path)."""
        ...

    async def observe(self, tenant_id: str, server: str, live: ToolDef) -> PinnedTool:
        """Apply the quarantine rule to a live definition (see the module doc); ``not_found`` without the server."""
        ...

    async def approve(self, tenant_id: str, server: str, tool: str, key_id: str | None,
                      expected_hash: str | None = None) -> PinnedTool:
        """Pin ``pending`` and approve. ``not_found`` for no such tool; ``conflict`` if ``expected_hash`` is
        given and is not the pending (or, for an approved tool, the pinned) hash. Approving an approved tool
        is a no-op."""
        ...
