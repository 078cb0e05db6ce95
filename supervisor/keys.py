"""API keys: ``stk_`` + 32 random base62 characters + a 6-character checksum.

The checksum lets us reject a mistyped or truncated key without a store
lookup; the store keeps only the SHA-256 of the key. Keys are shown once.
"""

from __future__ import annotations

import hashlib
import secrets
import string

__all__ = ["KEY_PREFIX", "generate_key", "hash_key", "key_display_prefix", "well_formed"]

KEY_PREFIX = "stk_"
_ALPHABET = string.digits + string.ascii_letters
_BODY = 32
_CHECK = 6


def _checksum(body: str) -> str:
    digest = int.from_bytes(hashlib.sha256(body.encode()).digest()[:8], "big")
    out = []
    for _ in range(_CHECK):
        digest, r = divmod(digest, 62)
        out.append(_ALPHABET[r])
    return "".join(out)


def generate_key() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY))
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def well_formed(key: str) -> bool:
    if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or len(key) != len(KEY_PREFIX) + _BODY + _CHECK:
        return False
    rest = key[len(KEY_PREFIX):]
    if any(c not in _ALPHABET for c in rest):
        return False
    return secrets.compare_digest(_checksum(rest[:_BODY]), rest[_BODY:])


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_display_prefix(key: str) -> str:
    return key[:12]
