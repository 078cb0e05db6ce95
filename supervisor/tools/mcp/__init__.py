"""MCP servers per tenant, pinned tool definitions with quarantine, and the ``mcp.*`` tools.

A tenant admin registers a streamable-HTTP MCP server through the API; the
supervisor lists its tools with the official ``mcp`` SDK and pins each tool's
definition (name, description, input schema) by hash. Every call re-checks the
live definition against the pin: a changed tool is quarantined, and not called,
until an admin approves the new definition. See ``store`` for the rule,
``service`` for the provider, ``tool`` for the tools bundles call.

The SDK is imported only when a server is first contacted (it costs ~0.8 s).
"""

from __future__ import annotations

import logging
from typing import Any

from supervisor.tools.mcp._egress import redact_query
from supervisor.tools.mcp._logs import protect_logs
from supervisor.tools.mcp.service import McpService, RefreshReport, ToolChange
from supervisor.tools.mcp.store import McpServer, McpStore, PinnedTool, ToolDef, definition_hash
from supervisor.tools.mcp.tool import McpCallArgs, McpCallTool, McpTool, make_resolver, resource_for

__all__ = [
    "McpCallArgs", "McpCallTool", "McpServer", "McpService", "McpStore", "McpTool", "PinnedTool", "RefreshReport",
    "ToolChange", "ToolDef", "definition_hash", "install", "open_store", "protect_logs", "redact_query",
    "resource_for",
]

log = logging.getLogger("stockade.tools.mcp")


def open_store(db: Any) -> McpStore:
    """The adapter for an open database handle (``SqliteDB`` or ``PgDB``)."""
    from supervisor.stores.postgres.db import PgDB

    if isinstance(db, PgDB):
        from supervisor.stores.postgres.mcp import PgMcpStore

        return PgMcpStore(db)
    from supervisor.stores.sqlite.mcp import SqliteMcpStore

    return SqliteMcpStore(db)


def install(reg: Any, settings: Any, services: Any) -> McpService | None:
    """Register ``mcp.call`` and the ``mcp.`` prefix; put the provider in ``services.extras["mcp"]``.

    Without services (a registry built for inspection) or a database there is
    nothing to pin against, so nothing is registered.
    """
    db = getattr(services, "extras", {}).get("db") if services is not None else None
    if db is None:
        log.info("MCP tools not installed: no database in services")
        return None
    service = services.extras.get("mcp")
    if not isinstance(service, McpService):
        from supervisor.secretbox import SecretBox, load_secrets_keys, load_secrets_next_key
        from supervisor.tools.mcp.sealed import SealedMcpStore

        current, retired = load_secrets_keys(settings)
        box = SecretBox(current, retired, load_secrets_next_key(settings, current, retired))
        store = SealedMcpStore(open_store(db), box)  # sealed at rest; retired keys (and the next one) open
        service = McpService(
            store, allow_private=list(settings.egress_allow_private), timeout_s=float(settings.egress_timeout_s),
            max_result_bytes=int(settings.egress_max_bytes),
        )
        services.extras["mcp"] = service
        services.closers.append(service.close)
    reg.register(McpCallTool(service))
    reg.register_prefix("mcp.", make_resolver(service))
    return service
