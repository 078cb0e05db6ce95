"""Canonical JSON: the one byte encoding that hashes, MACs and signatures cover."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical", "sha256_hex", "args_hash"]


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def args_hash(tool: str, args: Any) -> str:
    """The hash approvals bind to and idempotency derives from."""
    return sha256_hex(canonical({"tool": tool, "args": args}))
