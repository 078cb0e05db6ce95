"""The socket protocol's framing (one implementation, shared with the in-sandbox SDK)."""

from sandbox.runtime.stockade_sdk.wire import HEADER, MAX_FRAME, VERSION, FrameError, decode_body, encode

__all__ = ["HEADER", "MAX_FRAME", "VERSION", "FrameError", "decode_body", "encode"]
