"""Defence in depth: with the seccomp stage removed (test-only; there is no such switch in production),
the namespaces and the empty capability set still hold on their own."""

from __future__ import annotations

import errno as E
import socket

import pytest
from _harness import run_snippet

from sandbox import pipeline

pytestmark = pytest.mark.timeout(60)


async def test_namespaces_hold_without_seccomp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "STAGES", tuple(s for s in pipeline.STAGES if s[0] != "seccomp"))
    tcp = socket.create_server(("127.0.0.1", 0))
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0stockade-layers-test")
    abstract.listen()
    try:
        code = f"""
out(seccomp=open('/proc/self/status').read().split('Seccomp:')[1].split()[0])
attempt(lambda: socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=2))
attempt(lambda: socket.create_connection(('1.1.1.1', 443), timeout=2))
attempt(lambda: socket.socket(socket.AF_UNIX).connect('\\0stockade-layers-test'))
attempt(sc, 272, 0x10000000)
attempt(sc, 165, 0, ctypes.cast(ctypes.c_char_p(b'/tmp'), ctypes.c_void_p).value,
        ctypes.cast(ctypes.c_char_p(b'tmpfs'), ctypes.c_void_p).value, 0, 0)
attempt(os.setuid, 0)
attempt(lambda: open('/etc/shadow'))
"""
        r = await run_snippet(code)
    finally:
        tcp.close()
        abstract.close()
    lines = r.lines
    assert lines[0] == {"seccomp": "0"}, "the filter was not really removed; this test would prove nothing"
    loopback, internet, abstract_unix, userns, mount, setuid, shadow = lines[1:]
    assert loopback["errno"] == E.ECONNREFUSED  # the sandbox's own loopback: the host's listener is not on it
    assert internet["errno"] == E.ENETUNREACH  # a fresh network namespace has no interface but lo, no route
    assert abstract_unix["errno"] == E.ECONNREFUSED  # abstract names live in the network namespace
    assert userns["errno"] in (E.ENOSPC, E.EPERM)  # --disable-userns: max_user_namespaces is 0 here
    assert mount["errno"] == E.EPERM  # no capabilities
    assert setuid["errno"] in (E.EPERM, E.EINVAL)
    assert shadow["errno"] == E.ENOENT
