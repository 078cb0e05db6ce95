"""Where an outbound connection may go: DNS resolved by the supervisor, every answer checked.

One implementation for every tool that connects out (``http.request``, MCP
servers). The caller pins its connection to the addresses returned here, so a
resolver that answers differently at connect time (DNS rebinding) is never
consulted again. Refusing when ANY answer is forbidden (rather than skipping
it) keeps a name that mixes a public and a private address from ever being
half-trusted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

from supervisor.errors import StockadeError
from supervisor.resources.addresses import IPAddress, IPNetwork, is_forbidden
from supervisor.resources.url import NormalizedUrl

__all__ = ["Resolver", "checked_addresses", "resolve_addresses"]

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address the OS resolver returns for ``host`` (TCP), in its preference order."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise StockadeError("tool.failed", f"cannot resolve {host}: {exc}") from None
    out: list[str] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in out:
            out.append(str(sockaddr[0]))
    return out


async def checked_addresses(
    url: NormalizedUrl, allow: Sequence[IPNetwork], *, label: str = "egress to",
    unresolved_code: str = "tool.failed", resolver: Resolver | None = None,
) -> list[IPAddress]:
    """The addresses to connect to, or ``egress.blocked`` if any answer is forbidden."""
    literal = url.ip
    if literal is not None:
        candidates: list[IPAddress] = [literal]
    else:
        try:
            raw = await (resolver or resolve_addresses)(url.host, url.port)
        except StockadeError as exc:
            if exc.code == "tool.failed" and unresolved_code != "tool.failed":
                raise StockadeError(unresolved_code, exc.detail) from None
            raise
        candidates = []
        for a in raw:
            try:
                ip = ipaddress.ip_address(str(a).split("%", 1)[0])
            except ValueError:
                raise StockadeError("egress.blocked", f"{url.host} resolved to an unparsable address",
                                    reason="unparsable") from None
            if ip not in candidates:
                candidates.append(ip)
        if not candidates:
            raise StockadeError(unresolved_code, f"cannot resolve {url.host}: no addresses")
    for ip in candidates:
        reason = is_forbidden(ip, allow)
        if reason is not None:
            shown = url.host if literal is not None else f"{url.host} ({ip})"
            raise StockadeError("egress.blocked", f"{label} {shown} is blocked: {reason} address",
                                reason=reason, address=str(ip))
    return candidates
