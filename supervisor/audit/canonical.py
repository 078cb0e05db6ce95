"""Canonical JSON: the one byte encoding that hashes, MACs and signatures cover."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical", "sha256_hex", "args_hash"]


# One encoder, built once: json.dumps with non-default options constructs a new one per call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def args_hash(tool: str, args: Any) -> str:
    """The hash approvals bind to and idempotency derives from."""
    return sha256_hex(canonical({"tool": tool, "args": args}))
