"""Where a URL may connect: DNS resolved by the supervisor, every answer checked.

The connection is later pinned to one of the addresses returned here, so a
resolver that answers differently at connect time (DNS rebinding) is never
consulted again. ``resolve_addresses`` is the one place that asks DNS; tests
replace it to simulate rebinding.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from supervisor.errors import StockadeError
from supervisor.resources.addresses import IPAddress, IPNetwork, is_forbidden
from supervisor.resources.url import NormalizedUrl

__all__ = ["checked_addresses", "resolve_addresses"]


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


async def checked_addresses(url: NormalizedUrl, allow: Sequence[IPNetwork]) -> list[IPAddress]:
    """The addresses to connect to, or ``egress.blocked`` if ANY answer is forbidden.

    Refusing when one of several answers is bad (rather than skipping it) keeps a
    name that mixes a public and a private address from ever being half-trusted.
    """
    literal = url.ip
    if literal is not None:
        candidates: list[IPAddress] = [literal]
    else:
        raw = await resolve_addresses(url.host, url.port)
        candidates = []
        for a in raw:
            try:
                candidates.append(ipaddress.ip_address(a.split("%", 1)[0]))
            except ValueError:
                raise StockadeError("egress.blocked", f"{url.host} resolved to an unparsable address", reason="unparsable") from None
        if not candidates:
            raise StockadeError("tool.failed", f"cannot resolve {url.host}: no addresses")
    for ip in candidates:
        reason = is_forbidden(ip, allow)
        if reason is not None:
            shown = url.host if literal is not None else f"{url.host} ({ip})"
            raise StockadeError(
                "egress.blocked", f"egress to {shown} is blocked: {reason} address", reason=reason, address=str(ip)
            )
    return candidates
