"""Session 10, soak: a node that has carried a mix of runs is back where it started, on both stacks.

A self-hosted server runs for weeks; whatever it keeps per run, per call or per connection must go.
A soak of 200-280 mixed runs (echo, crash, timeout, cancel, output over limit, tool calls with and without
idempotency keys, approvals, SSE and Socket.IO clients that vanish with a TCP reset) measured at N/2 and N
found two things that grew with every run (tests/test_leaks_session10.py has the unit tests):

* Redis: each run's event stream kept a day's TTL after the run ended (a day of every run's output in
  Redis); now a minute after the terminal event.
* The embedded bus: ended runs' logs were kept ten minutes, and dropped only when something else was
  published (a quiet server kept its last runs' events); now a minute, on a timer too.

The rest was flat and is checked here as it was measured: asyncio tasks, open descriptors, child
processes, run folders, the worker's and the chain's per-run tables, stream slots, and Redis keys
without a TTL (only the run queue's stream lives without one).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import struct
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import read_sse

pytestmark = pytest.mark.timeout(60)

TEST_BUNDLES = Path(__file__).parent / "bundles"
TERMINAL = {"run.completed", "run.failed", "run.canceled", "run.timed_out"}
ENDED = {"succeeded", "failed", "canceled", "timed_out"}


def _tasks() -> collections.Counter:
    return collections.Counter(getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks() if not t.done())


def _store_sockets() -> set[str]:
    """Inodes of this process's TCP connections to PostgreSQL and Redis: their pools grow to their bounds
    under load and are not per run."""
    ports = {5432, 6379}
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if int(cols[2].rsplit(":", 1)[1], 16) in ports:
                    inodes.add(cols[9])
    return inodes


def _fds() -> int:
    """Open descriptors, without the stores' pooled connections."""
    pooled, n = _store_sockets(), 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            n += not (target.startswith("socket:[") and target[8:-1] in pooled)
    return n


def _children() -> int:
    me, n = os.getpid(), 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    n += int(f.read().rsplit(")", 1)[1].split()[1]) == me
            except OSError:
                continue
    return n


async def _until(cond, timeout_s: float = 8.0) -> bool:
    """Poll a quantity that settles on its own (a closing socket, a reaped child, a timer's drop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await cond():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.fixture
def pg_url(fresh_pg_url):
    """A database of its own: the node's sweeper queues again the runs other tests left queued in a shared one,
    and would run them here (extra streams, tasks and descriptors that are not this test's)."""
    return fresh_pg_url


async def _sse_reset(base_url: str, key: str, run_id: str) -> None:
    """An SSE client that reads the start of its stream, then vanishes with a TCP reset (no FIN)."""
    host, port = base_url.split("//")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    got = b""
    async with asyncio.timeout(10):
        while b"run.started" not in got:
            chunk = await reader.read(4096)
            assert chunk, got
            got += chunk
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _one(i: int, c: httpx.AsyncClient, base_url: str, key: str) -> str:
    kind = i % 8
    if kind == 0:
        body = {"bundle": "echo", "input": "a b c d"}
    elif kind == 1:
        body = {"bundle": "crasher", "input": ""}
    elif kind in (2, 5):  # canceled mid-run; a stream reset mid-run
        body = {"bundle": "sleeper", "input": "30" if kind == 2 else "0.5"}
    elif kind == 3:
        body = {"bundle": "flooder", "input": ""}  # ends limit.output
    else:
        calls = [{"tool": "echo", "args": {"n": j}} for j in range(3)]
        calls += [{"tool": "echo", "key": f"k{i}", "args": {"n": 1}}] * 2  # the repeat is deduped
        calls += [{"tool": "http.request", "args": {"method": "GET", "url": "http://10.0.0.1/"}}]  # denied
        body = {"bundle": "caller", "input": json.dumps({"calls": calls, "concurrent": kind == 6})}
    r = await c.post("/v1/runs", json=body)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    if kind == 5:
        await _sse_reset(base_url, key, run_id)
        return run_id
    async for e in read_sse(c, f"/v1/runs/{run_id}/events"):
        if kind == 2 and e.event == "message.delta":
            assert (await c.post(f"/v1/runs/{run_id}/cancel")).status_code == 200
        if e.event in TERMINAL:
            break
    return run_id


@pytest.mark.node_settings(sandbox_max_output_bytes=64 * 1024)
async def test_mixed_runs_leave_nothing_behind(node):
    rt, s = node.rt, node.rt.services
    tid, key = await node.tenant()
    for b in ("caller", "crasher", "sleeper", "flooder"):
        await rt.registry.register_dir(TEST_BUNDLES / b, tid)
    production = rt.settings.redis_url is not None
    if not production:
        s.events._retain_s = 0.3  # the embedded bus's minute, shortened
    tasks0, fds0, children0 = _tasks(), _fds(), _children()

    c = httpx.AsyncClient(base_url=node.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    sem = asyncio.Semaphore(8)

    async def go(i: int) -> str:
        async with sem:
            return await _one(i, c, node.base_url, key)

    try:
        ids = await asyncio.gather(*(go(i) for i in range(32)))

        async def all_ended() -> bool:
            return all([(await c.get(f"/v1/runs/{r}")).json()["status"] in ENDED for r in ids])

        assert await _until(all_ended)
    finally:
        await c.aclose()

    if production:
        redis, prefix = s.extras["redis"], rt.settings.redis_prefix
        ttls = {k[len(prefix):]: await redis.ttl(k) async for k in redis.scan_iter(match=prefix + "*", count=1000)}
        assert [k for k, t in ttls.items() if t == -1] == ["q:runs"], ttls  # the queue is the one key kept for good
        streams = {k: t for k, t in ttls.items() if k.startswith("ev:") and k[3:] in ids}
        assert len(streams) == len(ids)
        assert all(0 < t <= 60 for t in streams.values()), streams  # was a day each
    else:
        async def logs_dropped() -> bool:
            return not s.events._logs and not s.events._ended

        assert await _until(logs_dropped), (len(s.events._logs), len(s.events._ended))  # was: kept while quiet

    async def tasks_back() -> bool:
        return not (_tasks() - tasks0)

    assert await _until(tasks_back), _tasks() - tasks0

    async def descriptors_back() -> bool:
        return _fds() <= fds0 + 2  # slack: a descriptor the loop or a logger opened meanwhile

    assert await _until(descriptors_back), (fds0, _fds())

    async def children_gone() -> bool:
        return _children() <= children0

    assert await _until(children_gone), _children()
    runs_dir = rt.settings.data_dir / "runs"
    assert not runs_dir.exists() or not list(runs_dir.iterdir()), list(runs_dir.iterdir())
    w = rt.worker
    assert not w.started and not w._tasks and not w.cancels._watched and not w.beats._carried
    for icpt in rt.interceptors:
        for attr in ("_runs", "_waiting", "_pending"):
            assert not getattr(icpt, attr, None), (type(icpt).__name__, attr)
    assert not rt.stream_slots._open
    if production:
        assert not s.events._feeds and not s.events._ttl_renewed
