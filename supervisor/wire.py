"""The socket protocol's framing (one implementation, shared with the in-sandbox SDK), and what the
supervisor additionally refuses in a frame from a sandbox (``decode_frame``)."""

from __future__ import annotations

import json
import re
from typing import Any

from sandbox.runtime.stockade_sdk.wire import (
    HEADER,
    MAX_DEPTH,
    MAX_FRAME,
    MAX_REPLY,
    VERSION,
    FrameError,
    decode_body,
    encode,
    nests_deeper,
)

__all__ = ["HEADER", "MAX_DEPTH", "MAX_FRAME", "MAX_REPLY", "VERSION", "FrameError", "decode_body", "decode_frame", "encode",
           "nested_past"]

# Deeper nesting than MAX_DEPTH is refused at the door: a frame that decodes may still be too deep to encode
# again (the store, the SSE fan-out, the audit hash run on the same recursion limit, with more frames on the stack).
# A JSON escape of a UTF-16 surrogate: the only way a lone one (not storable, not encodable) gets in.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_CHECK = json.JSONEncoder(ensure_ascii=False, check_circular=False)


def nested_past(raw: str | bytes, value: Any, limit: int = MAX_DEPTH) -> bool:
    """``value``, decoded from the JSON ``raw``, nests deeper than ``limit``. Two C scans of ``raw`` first (that
    deep needs more than ``limit`` brackets): what could not be that deep is never walked."""
    opens = raw.count(b"[") + raw.count(b"{") if isinstance(raw, bytes) else raw.count("[") + raw.count("{")
    return opens > limit and nests_deeper(value, limit)


def decode_frame(body: bytes) -> dict[str, Any]:
    """``decode_body`` plus the supervisor's trust-boundary checks. Cost on top of the decode: a short
    frame (a streamed delta) pays nothing measurable, a longer one ~0.6 us per KB (two byte counts and a
    memchr); the walk and the re-encode run only for frames that could fail them."""
    obj = decode_body(body)
    v = obj["v"]
    if type(v) is not int:  # decode_body compared with ==: true and 1.0 passed as version 1
        raise FrameError("frame.invalid", f"unsupported protocol version {v!r}")
    if len(body) > 2 * MAX_DEPTH and nested_past(body, obj):  # a short frame (a streamed delta) is not even scanned
        raise FrameError("frame.invalid", f"frame nests deeper than {MAX_DEPTH} levels")
    if b"\\" in body and _SURROGATE_ESCAPE.search(body) is not None:
        try:  # escaped pairs decode to one character; a lone surrogate cannot be encoded as UTF-8
            _CHECK.encode(obj).encode("utf-8")
        except UnicodeEncodeError:
            raise FrameError("frame.invalid", "frame has a lone UTF-16 surrogate (not a Unicode character)") from None
    return obj

