"""IP addresses for egress: every spelling a resolver accepts, and which targets are off limits.

Two jobs, both pure (no DNS, no sockets):

- ``parse_host_ip(host)`` turns any IP spelling that ``inet_aton`` / the URL
  standard would accept into one address object: ``2130706433``,
  ``0177.0.0.1``, ``0x7f.1``, ``127.1``, ``[::ffff:127.0.0.1]``,
  ``fe80::1%eth0`` ... A URL's host goes through it so the policy and the
  egress check see the canonical address, never the spelling.
- ``is_forbidden(ip, allow)`` says why an address must not be reached
  (loopback, private, link-local, CGNAT, multicast, metadata, ...), looking
  through IPv6 wrappers that carry an IPv4 address (mapped, compatible, NAT64,
  6to4, Teredo), unless an operator opened a range (``egress_allow_private``).

The table is explicit rather than ``ipaddress``'s ``is_private`` because the
reason goes into the error and the audit record, and because several of those
flags classify wrappers (``::ffff:0:0/96``) instead of what they wrap; a final
``is_global`` check catches anything the table misses.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from supervisor.errors import StockadeError

__all__ = ["IPAddress", "IPNetwork", "embedded_ipv4", "is_forbidden", "parse_host_ip", "parse_networks"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_N4 = ipaddress.IPv4Network
_N6 = ipaddress.IPv6Network

# Order matters: the first matching row names the reason (metadata before link-local, ...).
_V4_BLOCKS: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_N4("169.254.169.254/32"), "metadata"),  # AWS/GCP/Azure/OpenStack instance metadata
    (_N4("100.100.100.200/32"), "metadata"),  # Alibaba Cloud metadata
    (_N4("192.0.0.192/32"), "metadata"),  # Oracle Cloud metadata
    (_N4("0.0.0.0/8"), "unspecified"),  # "this network"; 0.0.0.0 reaches the local host on Linux
    (_N4("127.0.0.0/8"), "loopback"),
    (_N4("10.0.0.0/8"), "private"),
    (_N4("172.16.0.0/12"), "private"),
    (_N4("192.168.0.0/16"), "private"),
    (_N4("100.64.0.0/10"), "cgnat"),
    (_N4("169.254.0.0/16"), "link-local"),
    (_N4("224.0.0.0/4"), "multicast"),
    (_N4("255.255.255.255/32"), "broadcast"),
    (_N4("240.0.0.0/4"), "reserved"),
    (_N4("192.0.0.0/24"), "reserved"),  # IETF protocol assignments
    (_N4("192.0.2.0/24"), "reserved"),  # documentation
    (_N4("198.51.100.0/24"), "reserved"),  # documentation
    (_N4("203.0.113.0/24"), "reserved"),  # documentation
    (_N4("198.18.0.0/15"), "reserved"),  # benchmarking
    (_N4("192.88.99.0/24"), "reserved"),  # 6to4 relay anycast
)

_V6_BLOCKS: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_N6("fd00:ec2::254/128"), "metadata"),  # AWS IMDS over IPv6
    (_N6("::/128"), "unspecified"),
    (_N6("::1/128"), "loopback"),
    (_N6("fc00::/7"), "private"),  # unique local (ULA)
    (_N6("fe80::/10"), "link-local"),
    (_N6("fec0::/10"), "reserved"),  # deprecated site-local
    (_N6("ff00::/8"), "multicast"),
    (_N6("100::/64"), "reserved"),  # discard-only
    (_N6("2001:db8::/32"), "reserved"),  # documentation
    (_N6("3fff::/20"), "reserved"),  # documentation (RFC 9637; newer than this Python's is_global table)
    (_N6("5f00::/16"), "reserved"),  # SRv6 SIDs (RFC 9602): segment routing inside one domain, never global
    (_N6("64:ff9b:1::/48"), "reserved"),  # local-use NAT64: translates into private space
    (_N6("2001::/23"), "reserved"),  # IETF protocol assignments (Teredo handled first, below)
)

_MAPPED = _N6("::ffff:0:0/96")  # IPv4-mapped: a dual-stack socket connects to the IPv4 address
_TRANSLATED = _N6("::ffff:0:0:0/96")  # SIIT IPv4-translated
_COMPAT = _N6("::/96")  # deprecated IPv4-compatible
_NAT64 = _N6("64:ff9b::/96")  # well-known NAT64 prefix: the translator connects to the IPv4 address
_6TO4 = _N6("2002::/16")
_TEREDO = _N6("2001::/32")

_HEX = re.compile(r"0[xX][0-9a-fA-F]*")
_OCT = re.compile(r"0[0-7]*")
_DEC = re.compile(r"[1-9][0-9]*")


def _ipv4_part(part: str) -> int | None:
    """One inet_aton component: decimal, octal (leading 0) or hex (0x; bare ``0x`` is 0 as in the URL standard)."""
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCT.fullmatch(part):
        return int(part, 8)
    if _DEC.fullmatch(part):
        return int(part, 10)
    return None


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """inet_aton semantics: 1-4 parts, the last one fills the remaining bytes (``127.1``, ``2130706433``)."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_ipv4_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    nums = [v for v in values if v is not None]
    *head, last = nums
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(nums)):
        return None
    value = last
    for i, v in enumerate(head):
        value |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_host_ip(host: str) -> IPAddress | None:
    """The address a host string denotes if it is an IP literal in any spelling; None for a DNS name.

    Accepts brackets (``[::1]``), IPv6 zone ids (``fe80::1%eth0``, ``%25eth0`` as in
    URLs; the zone is dropped) and one trailing dot. IPv6 results are returned as
    IPv6 (``::ffff:7f00:1`` stays mapped); ``is_forbidden`` looks inside.
    """
    if not isinstance(host, str) or not host or len(host) > 300:
        return None
    h = host
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        h = h.split("%", 1)[0]  # zone id: meaningless for egress, and it would defeat network membership
        try:
            return ipaddress.IPv6Address(h)
        except ValueError:
            return None
    if h.endswith("."):
        h = h[:-1]
    if not h or not h.isascii():
        return None
    return _parse_ipv4(h)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 wrapper carries (mapped, translated, compatible, NAT64, 6to4, Teredo client)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    value = int(ip)
    if ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip in _COMPAT and value > 1:  # ::, ::1 are themselves
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip in _6TO4:
        return ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF)
    if ip in _TEREDO:
        return ipaddress.IPv4Address((value & 0xFFFFFFFF) ^ 0xFFFFFFFF)  # client address is stored inverted
    return None


def _own_reason(ip: IPAddress) -> str | None:
    table: Iterable[tuple[IPNetwork, str]] = _V4_BLOCKS if ip.version == 4 else _V6_BLOCKS
    for net, reason in table:
        if ip in net:
            return reason
    if not ip.is_global:
        return "reserved"
    return None


def is_forbidden(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``ip`` must not be reached (``"loopback"``, ``"metadata"``, ...), or None if it may.

    ``allow`` holds operator-opened networks; an address inside one (or whose
    embedded IPv4 is inside one) is allowed whatever its class.
    """
    ip = ipaddress.ip_address(str(ip).split("%", 1)[0])  # drop a zone id
    inner = embedded_ipv4(ip)
    if any(ip in net for net in allow if net.version == ip.version):
        return None
    if inner is not None and any(inner in net for net in allow if net.version == 4):
        return None
    if inner is not None:
        if ip in _TEREDO or ip in _COMPAT:
            # Deprecated or tunnelled forms have no business in an API URL; refuse them outright.
            return _own_reason(inner) or "reserved"
        return _own_reason(inner)
    return _own_reason(ip)


@lru_cache(maxsize=64)
def _parse_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for c in cidrs:
        try:
            out.append(ipaddress.ip_network(c.strip(), strict=False))
        except ValueError:
            raise StockadeError("input.invalid", f"egress_allow_private: {c!r} is not a CIDR network") from None
    return tuple(out)


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Operator CIDRs (``settings.egress_allow_private``) as network objects (cached)."""
    return _parse_networks(tuple(cidrs))
