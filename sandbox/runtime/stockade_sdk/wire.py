"""The socket wire protocol, shared by the in-sandbox SDK and the supervisor.

Standard library only: this file runs inside the jail.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
UTF-8 JSON encoding one object. Every object carries ``"v": 1`` and a
``"type"``. Frames over the negotiated cap are a protocol error. See
``supervisor/README.md`` for the message types.
"""

from __future__ import annotations

import json
import math
import struct

__all__ = ["HEADER", "MAX_DEPTH", "MAX_FRAME", "MAX_REPLY", "VERSION", "FrameError", "decode_body", "encode",
           "nests_deeper"]

VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME = 1024 * 1024  # default cap; the supervisor announces its own in ``welcome``
# What the supervisor may send back, whatever the negotiated cap: a tool's result can be larger than
# what a sandbox may send (code.run returns up to 20 files of 256 KiB, base64)
MAX_REPLY = 16 * 1024 * 1024
# Deeper nesting is refused by the supervisor (a frame that decodes may be too deep to encode again)
MAX_DEPTH = 128


class FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Built once: json.dumps/json.loads with options construct a new encoder/decoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(obj: dict, max_frame: int = MAX_FRAME) -> bytes:
    obj.setdefault("v", VERSION)
    try:
        body = _ENCODER.encode(obj).encode()
    except UnicodeEncodeError:  # a str with a lone surrogate ("\udc80"): no UTF-8 for it, on either side
        raise FrameError("frame.invalid", "frame has a lone UTF-16 surrogate (not a Unicode character)") from None
    if len(body) > max_frame:
        raise FrameError("frame.too_large", f"frame of {len(body)} bytes exceeds {max_frame}")
    return HEADER.pack(len(body)) + body


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON syntax but decodes to inf, which nothing downstream can encode again (the
    # args hash, the stores, the SSE fan-out): refused here like the Infinity literal
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def decode_body(body: bytes) -> dict:
    try:
        obj = _DECODER.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError("frame.invalid", f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError("frame.invalid", "frame must be a JSON object")
    if obj.get("v") != VERSION:
        raise FrameError("frame.invalid", f"unsupported protocol version {obj.get('v')!r}")
    if not isinstance(obj.get("type"), str):
        raise FrameError("frame.invalid", "frame has no type")
    return obj


def nests_deeper(obj: object, limit: int = MAX_DEPTH) -> bool:
    """True if dicts/lists nest deeper than ``limit`` levels (iterative: any depth is safe to check)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return True
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values() if isinstance(v, (dict, list)))
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return False
