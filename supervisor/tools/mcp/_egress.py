"""Where an MCP server URL may connect: normalised, resolved by the supervisor, every address checked.

The same rule as ``http.request``: loopback, private, link-local, CGNAT,
metadata and friends are refused in every spelling (``supervisor.resources``)
unless the operator opened the range (``egress_allow_private``). The checked
addresses are handed to the pinned transport, so DNS is never asked again for
that connection (no rebinding between check and connect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.errors import StockadeError
from supervisor.resources import NormalizedUrl, normalize_url, parse_networks
from supervisor.resources.addresses import IPAddress, IPNetwork
from supervisor.resources.egress import checked_addresses

__all__ = ["Target", "check_url", "query_secrets", "redact_query", "resolve_target"]


@dataclass(frozen=True)
class Target:
    url: NormalizedUrl
    addresses: tuple[IPAddress, ...]  # checked, in resolver preference order


def check_url(raw: object) -> NormalizedUrl:
    """The canonical http(s) URL, or ``input.invalid``."""
    if not isinstance(raw, str):
        raise StockadeError("input.invalid", "the MCP server url must be a string")
    return normalize_url(raw)


async def resolve_target(url: NormalizedUrl, allow_private: Sequence[str]) -> Target:
    """Resolve and check; ``egress.blocked`` if ANY address is forbidden (a name that mixes a
    public and a private answer is never half-trusted)."""
    allow: tuple[IPNetwork, ...] = parse_networks(allow_private)
    candidates = await checked_addresses(url, allow, label="MCP server", unresolved_code="tool.unavailable")
    return Target(url, tuple(candidates))


# Many hosted MCP servers take their credential in the URL's query (``?api_key=...``); the URL is shown to
# every reader of the tenant (GET /v1/mcp/servers) and kept in the append-only audit log, so it is shown
# with its query values cut out, and those values are cut out of what the server or the network says.
_REDACTED = "[redacted]"


def redact_query(url: str) -> str:
    """``url`` with each query value replaced: ``https://h/mcp?api_key=[redacted]&v=[redacted]``."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    parts = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        parts.append(f"{name}={_REDACTED}" if eq and value else (name if not eq else f"{name}="))
    return f"{base}?{'&'.join(parts)}"


def query_secrets(url: str) -> list[str]:
    """The query's values, as they may appear in an error text (raw and percent-decoded)."""
    from urllib.parse import unquote_plus

    out = []
    for pair in url.partition("?")[2].split("&"):
        value = pair.partition("=")[2]
        if value:
            out += [value, unquote_plus(value)]
    return out
