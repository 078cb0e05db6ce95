"""``http.request``'s use of the shared egress check (``supervisor.resources.egress``).

``resolve_addresses`` stays a module attribute here: it is the seam tests
replace to simulate DNS rebinding.
"""

from __future__ import annotations

from collections.abc import Sequence

from supervisor.resources import egress as _shared
from supervisor.resources.addresses import IPAddress, IPNetwork
from supervisor.resources.url import NormalizedUrl

__all__ = ["checked_addresses", "resolve_addresses"]

resolve_addresses = _shared.resolve_addresses


async def checked_addresses(url: NormalizedUrl, allow: Sequence[IPNetwork]) -> list[IPAddress]:
    return await _shared.checked_addresses(url, allow, resolver=lambda h, p: resolve_addresses(h, p))
