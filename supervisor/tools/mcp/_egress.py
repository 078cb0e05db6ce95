"""Where an MCP server URL may connect: normalised, resolved by the supervisor, every address checked.

The same rule as ``http.request``: loopback, private, link-local, CGNAT,
metadata and friends are refused in every spelling (``supervisor.resources``)
unless the operator opened the range (``egress_allow_private``). The checked
addresses are handed to the pinned transport, so DNS is never asked again for
that connection (no rebinding between check and connect).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.errors import StockadeError
from supervisor.resources import NormalizedUrl, is_forbidden, normalize_url, parse_networks
from supervisor.resources.addresses import IPAddress, IPNetwork

__all__ = ["Target", "check_url", "resolve_target"]


@dataclass(frozen=True)
class Target:
    url: NormalizedUrl
    addresses: tuple[IPAddress, ...]  # checked, in resolver preference order


def check_url(raw: object) -> NormalizedUrl:
    """The canonical http(s) URL, or ``input.invalid``."""
    if not isinstance(raw, str):
        raise StockadeError("input.invalid", "the MCP server url must be a string")
    return normalize_url(raw)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise StockadeError("tool.unavailable", f"cannot resolve {host}: {exc}") from None
    out: list[IPAddress] = []
    for family, _t, _p, _c, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        except ValueError:
            raise StockadeError("egress.blocked", f"{host} resolved to an unparsable address", reason="unparsable") from None
        if ip not in out:
            out.append(ip)
    if not out:
        raise StockadeError("tool.unavailable", f"cannot resolve {host}: no addresses")
    return out


async def resolve_target(url: NormalizedUrl, allow_private: Sequence[str]) -> Target:
    """Resolve and check; ``egress.blocked`` if ANY address is forbidden (a name that mixes a
    public and a private answer is never half-trusted)."""
    allow: tuple[IPNetwork, ...] = parse_networks(allow_private)
    literal = url.ip
    candidates = [literal] if literal is not None else await _resolve(url.host, url.port)
    for ip in candidates:
        reason = is_forbidden(ip, allow)
        if reason is not None:
            shown = url.host if literal is not None else f"{url.host} ({ip})"
            raise StockadeError("egress.blocked", f"MCP server {shown} is blocked: {reason} address",
                                reason=reason, address=str(ip))
    return Target(url, tuple(candidates))
