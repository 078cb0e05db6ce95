"""Session 21: ``http.request`` against hostile answers (test_http_egress_attacks_session21.py has redirects, DNS,
proxies and request arguments; test_http_ssrf.py address spellings).

Compression bombs and stacked codings, charsets that are no text encoding, trickled, endless and huge bodies,
broken framing and header floods, each from a real local server; and the same attacks through a node on both
stacks, where each must end with a stable code, audited and uncharged.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import time
import tracemalloc
import zlib
from functools import cache
from typing import Any

import pytest

from supervisor.errors import StockadeError
from tests.fakes.hostile_http import HostileServer, RawRequest, respond
from tests.tools.test_http_egress_attacks_session21 import STABLE, _call, _refused, _settings
from tests.tools.test_http_helpers import A_HOST

pytestmark = pytest.mark.timeout(60)

# -------------------------------------------------------------------------------------------------- answers

@cache
def _gzip_zeros(mib: int, layers: int = 1) -> bytes:
    """``mib`` MiB of zeros, gzip'd (streamed: never all in memory), then gzip'd again ``layers - 1`` times."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    body = b"".join(c.compress(block) for _ in range(mib)) + c.flush()
    for _ in range(layers - 1):
        body = gzip.compress(body, 9)
    return body


def _answer(status: int, body: bytes, headers: dict[str, str]) -> Any:
    headers = dict(headers)
    content_type = headers.pop("content-type", "application/octet-stream")

    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        await respond(w, status, body, content_type=content_type, headers=headers)

    return handler


async def _peak_mib(coro: Any) -> tuple[Any, float]:
    tracemalloc.start()
    try:
        try:
            out: Any = await coro
        except StockadeError as exc:
            out = exc
        return out, tracemalloc.get_traced_memory()[1] / (1 << 20)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("mib,layers,encoding", [
    (200, 1, "gzip"),  # 200 KB on the wire: one network read used to inflate to 64 MiB at once (151 MB peak)
    (200, 2, "gzip, gzip"),  # 500 bytes on the wire used to become 200 MB in one zlib call (460 MB peak)
    (200, 2, "x-gzip, gzip"),
])
async def test_compression_bombs_are_capped_in_bounded_memory(tmp_path, mib, layers, encoding):
    """FIXED: the cap applied after decoding, but the HTTP library inflated each read (and each stacked
    layer) in one unbounded call first. Now every layer inflates at most 64 KiB per step."""
    body = _gzip_zeros(mib, layers)
    with HostileServer(_answer(200, body, {"content-encoding": encoding}), host=A_HOST) as srv:
        s = _settings(tmp_path, egress_max_bytes=100_000)
        err, peak = await _peak_mib(_call(s, url=f"{srv.url}/"))
        assert isinstance(err, StockadeError) and err.code == "egress.too_large", err
        assert peak < 16, f"peak {peak:.0f} MiB for a 100 kB cap"


async def test_more_stacked_codings_than_decoded_are_refused(tmp_path):
    body = gzip.compress(gzip.compress(gzip.compress(b"hello")))
    with HostileServer(_answer(200, body, {"content-encoding": "gzip, gzip, gzip"}), host=A_HOST) as srv:
        err = await _refused(_settings(tmp_path), url=f"{srv.url}/")
        assert err.code == "tool.failed" and "codings" in err.detail


@pytest.mark.parametrize("kind,encoding", [("gzip", "gzip"), ("deflate", "deflate"), ("raw", "deflate"),
                                           ("gzip", "GZIP"), ("gzip", "identity, gzip")])
async def test_well_formed_encoded_bodies_decode(tmp_path, kind, encoding):
    wbits = {"gzip": 31, "deflate": 15, "raw": -15}[kind]
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    text = "hello, wörld " * 20000  # ~260 KB decoded: many 64 KiB steps
    body = c.compress(text.encode()) + c.flush()
    headers = {"content-encoding": encoding, "content-type": "text/plain; charset=utf-8", "x-a": "1"}
    with HostileServer(_answer(200, body, headers), host=A_HOST) as srv:
        out = await _call(_settings(tmp_path), url=f"{srv.url}/")
        assert out["body"] == text
        assert "content-encoding" not in out["headers"] and out["headers"]["x-a"] == "1"
        assert srv.requests[0].headers["accept-encoding"] == "gzip, deflate"  # only what we decode


async def test_a_coding_we_do_not_decode_is_returned_as_sent_and_labelled(tmp_path):
    with HostileServer(_answer(200, b"raw-bytes", {"content-encoding": "br"}), host=A_HOST) as srv:
        out = await _call(_settings(tmp_path), url=f"{srv.url}/", headers={"Accept-Encoding": "br"})
        assert out["body"] == "raw-bytes" and out["headers"]["content-encoding"] == "br"
        assert [v for n, v in srv.requests[0].raw_headers if n.lower() == "accept-encoding"] == ["br"]


@pytest.mark.parametrize("body", [b"not gzip at all", gzip.compress(b"x" * 1000)[:-12] + b"garbage!garbage!"])
async def test_a_corrupt_encoded_body_is_tool_failed(tmp_path, body):
    with HostileServer(_answer(200, body, {"content-encoding": "gzip"}), host=A_HOST) as srv:
        err = await _refused(_settings(tmp_path), url=f"{srv.url}/")
        assert err.code == "tool.failed", err


@pytest.mark.parametrize("charset", ["rot13", "base64", "zlib", "hex", "idna", "undefined", "unicode_escape",
                                     "punycode", "no-such-charset"])
async def test_a_charset_that_is_no_text_encoding_falls_back_to_utf8(tmp_path, charset):
    """FIXED: the response's ``charset`` picked any Python codec: ``rot13``/``base64``/``zlib`` raised a bare
    LookupError and ``idna``/``undefined`` a UnicodeError out of the tool (the chain's catch-all made it a
    logged ``tool.failed``), ``unicode_escape`` rewrote the text. Now: UTF-8, as for an unknown charset."""
    body = "caf\u00e9 \\x41".encode()
    with HostileServer(_answer(200, body, {"content-type": f"text/plain; charset={charset}"}), host=A_HOST) as srv:
        out = await _call(_settings(tmp_path), url=f"{srv.url}/")
        assert out["body"] == "caf\u00e9 \\x41"


async def test_a_punycode_charset_cannot_stall_the_event_loop(tmp_path):
    """FIXED: punycode decodes in quadratic time, synchronously, after the deadline's last chance to fire:
    250 kB took 9 s with the event loop held (the 5 MB cap: hours, every run of the worker frozen)."""
    body = bytes(97 + i % 26 for i in range(250_000))
    with HostileServer(_answer(200, body, {"content-type": "text/plain; charset=punycode"}), host=A_HOST) as srv:
        started = time.monotonic()
        out = await _call(_settings(tmp_path), url=f"{srv.url}/")
        assert out["body"] == body.decode()
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("charset,raw,text", [("latin-1", "café".encode("latin-1"), "café"),
                                              ("utf-16", "hé".encode("utf-16"), "hé"),
                                              ("shift_jis", "日本".encode("shift_jis"), "日本"),
                                              ("UTF-8", b"ok\xff", "ok\ufffd")])
async def test_real_charsets_still_decode(tmp_path, charset, raw, text):
    with HostileServer(_answer(200, raw, {"content-type": f"text/plain; charset={charset}"}), host=A_HOST) as srv:
        assert (await _call(_settings(tmp_path), url=f"{srv.url}/"))["body"] == text


async def _trickle_body(req: RawRequest, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
    while True:
        w.write(b"x")
        await w.drain()
        await asyncio.sleep(0.1)  # each read arrives well within any per-read timeout


async def _trickle_head(req: RawRequest, w: asyncio.StreamWriter) -> None:
    for ch in b"HTTP/1.1 200 OK\r\nx-slow: " + b"y" * 10_000:
        w.write(bytes([ch]))
        await w.drain()
        await asyncio.sleep(0.1)


async def _continues(req: RawRequest, w: asyncio.StreamWriter) -> None:
    while True:
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("handler", [_trickle_body, _trickle_head, _continues])
async def test_slow_answers_hit_the_total_deadline(tmp_path, handler):
    with HostileServer(handler, host=A_HOST) as srv:
        started = time.monotonic()
        err = await _refused(_settings(tmp_path, egress_timeout_s=30), url=f"{srv.url}/", timeout_s=1.0)
        assert err.code == "tool.timeout", err
        assert time.monotonic() - started < 5


async def test_the_settings_deadline_bounds_a_call_without_timeout_s(tmp_path):
    with HostileServer(_trickle_body, host=A_HOST) as srv:
        started = time.monotonic()
        err = await _refused(_settings(tmp_path, egress_timeout_s=1.0), url=f"{srv.url}/", timeout_s=3600)
        assert err.code == "tool.timeout" and time.monotonic() - started < 5


def _endless(head: bytes) -> Any:
    """A server that sends ``head``, then body bytes without end."""
    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        w.write(head)
        block = b"z" * 65536
        while True:
            w.write(block)
            await w.drain()
    return handler


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000000\r\n\r\n",  # a length past any cap
    b"HTTP/1.0 200 OK\r\n\r\n",  # no length: read to the close
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nFFFFFFFFFFFFFFF\r\n",  # one endless chunk
], ids=["length", "http10", "chunk"])
async def test_huge_bodies_stop_at_the_cap_in_bounded_memory(tmp_path, head):
    with HostileServer(_endless(head), host=A_HOST) as srv:
        err, peak = await _peak_mib(_call(_settings(tmp_path, egress_max_bytes=1_000_000), url=f"{srv.url}/"))
        assert isinstance(err, StockadeError) and err.code == "egress.too_large", err
        assert peak < 16


def _raw(data: bytes, *, close: bool = True) -> Any:
    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        w.write(data)
        await w.drain()
        if close:
            w.close()
        else:
            await asyncio.Event().wait()

    return handler


@pytest.mark.parametrize("data,expect", [
    (b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it until close", "all of it until close"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b", "tool.failed"),  # closed mid-body
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n", "tool.failed"),  # no last chunk
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"f" * 200_000 + b"\r\n", "tool.failed"),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;" + b"e" * 200_000 + b"\r\nhello\r\n0\r\n\r\n",
     "tool.failed"),  # a huge chunk extension
    (b"HTTP/1.1 200 OK\r\nx-big: " + b"v" * (1 << 20) + b"\r\ncontent-length: 0\r\n\r\n", "tool.failed"),
    (b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(20_000)) + b"content-length: 0\r\n\r\n",
     "tool.failed"),  # 20,000 headers (~200 kB): past the client's header block limit
    (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello", "tool.failed"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     "hello"),  # both framings: chunked wins (RFC 9112 6.3), and the connection is never reused
    (b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 0\r\n\r\n", ""),  # obs-fold: unfolded
    (b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 0\r\n\r\n", "tool.failed"),
    (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nraw", "stable"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "tool.failed"),
    (b"", "tool.failed"),
    (b"HTTP/1.1 99999 X\r\n\r\n", "tool.failed"),
])
async def test_broken_framing_ends_with_a_stable_code(tmp_path, data, expect):
    with HostileServer(_raw(data), host=A_HOST) as srv:
        try:
            out: Any = await _call(_settings(tmp_path), url=f"{srv.url}/")
        except StockadeError as exc:
            out = exc
        if expect == "stable":
            assert not isinstance(out, StockadeError) or out.code in STABLE, out
        elif expect in STABLE:
            assert isinstance(out, StockadeError) and out.code == expect, out
        else:
            assert not isinstance(out, StockadeError), out
            assert out["body"] == expect


async def test_many_small_response_headers_within_the_limit_are_bounded(tmp_path):
    data = (b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h: %d\r\n" % i for i in range(5_000))
            + b"content-length: 2\r\n\r\nok")
    with HostileServer(_raw(data), host=A_HOST) as srv:
        out = await _call(_settings(tmp_path), url=f"{srv.url}/")
        assert out["body"] == "ok" and len(out["headers"]["x-h"]) < 100_000


# --------------------------------------------------------------------------------- through a node, both stacks

E2E_POLICY = """
version: 1
rules:
  - {id: any-http, tool: http.request, verdict: allow}
prices:
  http.request: 0.0005
"""


@pytest.fixture(params=["embedded", "production"])
def egress_node_config(request):
    """A node that may reach 127.0.0.2 (the hostile "public" server) and nothing else private. Sync: the
    database fixtures run their own event loop."""
    from tests.e2e.harness import make_data_dir, settings_for

    extra: dict[str, Any] = dict(egress_allow_private=[f"{A_HOST}/32"], egress_max_bytes=100_000,
                                 egress_timeout_s=10)
    if request.param == "production":
        return settings_for("production", make_data_dir(), pg_url=request.getfixturevalue("pg_url"),
                            redis_url=request.getfixturevalue("redis_url"),
                            redis_prefix=request.getfixturevalue("redis_prefix"), **extra)
    return settings_for("embedded", make_data_dir(), **extra)


@pytest.mark.timeout(180)
async def test_hostile_answers_through_a_node_end_with_stable_codes_audited_and_uncharged(egress_node_config):
    """Through the governed chain, as a bundle calls it: every hostile answer ends with its code in the bundle's
    result and a ``tool.failed`` audit record; as documented (supervisor/README.md, budget step) a per-call
    price is charged when the call succeeds, so only the two good answers are on the ledger."""
    from tests.e2e.harness import start_node
    from tests.e2e.test_governance import plan, results_of
    from tests.e2e.test_run_pipeline import push, start

    bomb = _gzip_zeros(50, 2)

    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        if req.path == "/bomb":
            await respond(w, 200, bomb, headers={"content-encoding": "gzip, gzip"})
        elif req.path == "/trickle":
            await _trickle_body(req, w)
        elif req.path == "/cut":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
            await w.drain()
            w.close()
        elif req.path == "/puny":
            await respond(w, 200, b"abc" * 30_000, content_type="text/plain; charset=punycode")
        elif req.path == "/to-loopback":
            await respond(w, 307, b"", headers={"location": "http://127.0.0.1:6379/"})
        else:
            await respond(w, 200, b"fine", content_type="text/plain")

    node = await start_node(egress_node_config)
    try:
        with HostileServer(handler, host=A_HOST) as srv:
            tid, key = await node.tenant()
            await push(node, tid, "toolprobe")
            c = node.client(key)
            r = await c.put("/v1/policy", content=E2E_POLICY, headers={"Content-Type": "application/yaml"})
            assert r.status_code == 200, r.text
            paths = ["/ok", "/bomb", "/trickle", "/cut", "/puny", "/to-loopback"]
            calls = [{"tool": "http.request", "args": {"url": f"{srv.url}{p}", "timeout_s": 1.5}} for p in paths]
            run = await start(c, "toolprobe", plan(*calls))
            results, _ = await results_of(c, run["id"])
            assert results[0]["ok"]["body"] == "fine" and results[4]["ok"]["body"] == "abc" * 30_000, results
            assert [r.get("error") for r in results[1:4] + results[5:]] == [
                "egress.too_large", "tool.timeout", "tool.failed", "egress.blocked"], results
            audit = (await c.get("/v1/audit", params={"run_id": run["id"]})).json()["data"]
            failed = [(a["tool"], a["code"]) for a in audit if a["kind"] == "tool.failed"]
            assert sorted(failed) == sorted(("http.request", code) for code in
                                            ("egress.too_large", "tool.timeout", "tool.failed", "egress.blocked"))
            ledger = (await c.get("/v1/ledger", params={"limit": 500})).json()["data"]
            spent = round(sum(e["amount_usd"] for e in ledger if e["scope"] == "tenant"), 6)
            assert spent == 0.001, ledger
    finally:
        await node.stop()


async def test_bytes_after_the_end_of_a_compressed_body_still_count_against_the_cap(tmp_path):
    """FIXED: after the gzip member's end, further bytes were dropped uncounted: a server could stream
    for the whole deadline (bandwidth, time) while the decoded size stayed at 5 bytes."""
    async def handler(req: RawRequest, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\nconnection: close\r\n\r\n" + gzip.compress(b"hello"))
        block = b"\0" * 65536
        while True:
            w.write(block)
            await w.drain()

    with HostileServer(handler, host=A_HOST) as srv:
        started = time.monotonic()
        err = await _refused(_settings(tmp_path, egress_max_bytes=1_000_000, egress_timeout_s=20), url=f"{srv.url}/")
        assert err.code == "egress.too_large", err
        assert time.monotonic() - started < 10


async def test_an_incompressible_body_at_the_cap_still_passes_gzipped(tmp_path):
    data = os.urandom(100_000)
    body = gzip.compress(data, 9)
    assert len(body) > len(data)  # gzip made it bigger
    with HostileServer(_answer(200, body, {"content-encoding": "gzip", "content-type": "text/plain; charset=latin-1"}),
                       host=A_HOST) as srv:
        out = await _call(_settings(tmp_path, egress_max_bytes=100_000), url=f"{srv.url}/")
        assert out["body"].encode("latin-1") == data



@pytest.mark.parametrize("encoding,wbits", [("gzip", 31), ("deflate", 15), ("deflate", -15)])
def test_the_decoder_takes_the_body_in_any_slicing_and_bounds_every_piece(encoding, wbits):
    from supervisor.tools.http._decode import STEP, BodyDecoder

    text = b"".join(b"%d," % i for i in range(100_000))
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    body = c.compress(text) + c.flush()
    for size in (1, 7, 4096, len(body)):
        d = BodyDecoder([encoding])
        pieces = [p for i in range(0, len(body), size) for p in d.feed(body[i:i + size])] + list(d.flush())
        assert b"".join(pieces) == text and max(map(len, pieces)) <= STEP and d.decoded
