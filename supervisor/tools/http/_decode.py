"""Response ``Content-Encoding`` decoding whose every step's output is bounded.

The HTTP client library's own decoders inflate each network read in one
``zlib`` call: 64 KiB of gzip'd zeros become 64 MiB in memory before a size cap
can look at it, and stacked codings (``Content-Encoding: gzip, gzip``) multiply
the ratio again - a 500-byte answer became a 200 MB allocation, a few KiB one
gigabytes. Here every layer inflates at most ``STEP`` bytes per call (the rest
of its input waits in ``unconsumed_tail``), so the caller's cap on decoded bytes
(``egress_max_bytes``) stops the stream after at most one step past it, and the
caller can yield to the event loop between steps.

Codings: ``gzip`` / ``x-gzip`` and ``deflate`` (zlib-wrapped or raw, as browsers
accept), at most ``MAX_LAYERS`` of them; ``identity`` is skipped. A body in a
coding this module does not know (``br``, ``zstd``, ``compress`` ...) is
passed through undecoded and reported so (``decoded`` False): the caller
keeps the ``Content-Encoding`` header then, so the body is never mislabelled.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

from supervisor.errors import StockadeError

__all__ = ["ACCEPT_ENCODING", "MAX_LAYERS", "STEP", "BodyDecoder"]

ACCEPT_ENCODING = "gzip, deflate"  # what we can decode, advertised whatever the HTTP library could do
MAX_LAYERS = 2
STEP = 64 * 1024
_KNOWN = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
_PROVEN = 64  # bytes of deflate input accepted as zlib-wrapped without output or error


class _Inflate:
    def __init__(self, kind: str) -> None:
        self._d = zlib.decompressobj(zlib.MAX_WBITS | 16 if kind == "gzip" else zlib.MAX_WBITS)
        # deflate: zlib-wrapped or raw; until the wrapper is proven (output came, or enough input passed the
        # header check) the input is kept, so a raw stream can be replayed whatever slices it arrived in
        self._head: bytes | None = b"" if kind == "deflate" else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The inflated bytes of ``data``, at most ``STEP`` per piece (empty pieces mark work done)."""
        if self._head is not None:
            self._head += data
        while data and not self._d.eof:
            try:
                out = self._d.decompress(data, STEP)
            except zlib.error:
                if self._head is None:
                    raise
                data, self._head = self._head, None  # not zlib-wrapped: raw deflate from the first byte
                self._d = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            if self._head is not None and (out or len(self._head) >= _PROVEN):
                self._head = None
            data = self._d.unconsumed_tail
            yield out

    def flush(self) -> Iterator[bytes]:
        while not self._d.eof:  # output zlib still holds for input it has consumed
            out = self._d.decompress(b"", STEP)
            if not out:
                break
            yield out


class BodyDecoder:
    """Feed raw body bytes, get decoded pieces of at most ``STEP`` bytes (plus empty progress markers)."""

    def __init__(self, content_encodings: Iterable[str]) -> None:
        codings = [c.strip().lower() for v in content_encodings for c in v.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        self.decoded = all(c in _KNOWN for c in codings)
        self._layers: list[_Inflate] = []
        if not self.decoded:
            return
        if len(codings) > MAX_LAYERS:
            raise StockadeError(
                "tool.failed", f"the response stacks {len(codings)} content codings (at most {MAX_LAYERS} decoded)"
            )
        self._layers = [_Inflate(_KNOWN[c]) for c in reversed(codings)]  # the last coding applied comes off first

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            yield from self._through(0, data)
        except zlib.error as exc:
            raise StockadeError("tool.failed", f"the response body does not decode: {exc}") from None

    def flush(self) -> Iterator[bytes]:
        try:
            for i, layer in enumerate(self._layers):
                for out in layer.flush():
                    yield from self._through(i + 1, out)
        except zlib.error as exc:
            raise StockadeError("tool.failed", f"the response body does not decode: {exc}") from None

    def _through(self, i: int, data: bytes) -> Iterator[bytes]:
        if i == len(self._layers):
            yield data
            return
        for out in self._layers[i].feed(data):
            if out:
                yield from self._through(i + 1, out)
            else:
                yield b""
