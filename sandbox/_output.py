"""Bounded capture of a pipe: keep the last ``keep`` bytes, count all of them."""

from __future__ import annotations

import os

__all__ = ["Tail"]


class Tail:
    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.buf = bytearray()
        self.total = 0

    def feed(self, fd: int) -> bool:
        """Read what is available; False at EOF."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        self.total += len(chunk)
        self.buf += chunk
        if len(self.buf) > self.keep:
            del self.buf[: len(self.buf) - self.keep]
        return True

    def drain(self, fd: int) -> None:
        """Read what is buffered now, without waiting for EOF."""
        while True:
            before = self.total
            if not self.feed(fd) or self.total == before:
                return

    def value(self) -> bytes:
        return bytes(self.buf)
