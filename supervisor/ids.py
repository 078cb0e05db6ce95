"""Short, prefixed, roughly time-sortable identifiers (``run_01hk...``).

Ten characters of millisecond time then ten of randomness, in Crockford's
lower-case base32: ids sort by creation time (useful for tie-breaking rows with
equal timestamps and for index locality) and 50 random bits make collisions
within one millisecond negligible.
"""

from __future__ import annotations

import secrets
import time

__all__ = ["new_id"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """``prefix`` followed by 20 base32 characters, e.g. ``new_id("run_")``."""
    return prefix + _b32(time.time_ns() // 1_000_000, 10) + _b32(secrets.randbits(50), 10)
