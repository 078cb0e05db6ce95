"""Peer verification on a run's socket: only a live process of that run's sandbox is accepted."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from contextlib import asynccontextmanager
from typing import Any

import pytest
from _harness import POOL, interpreter, make_box

from sandbox.launcher import launch
from sandbox.spec import Limits, SandboxSpec
from supervisor.errors import StockadeError
from supervisor.peer import peer_alive, verify_peer

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def run_socket(uid: int | None):
    box = make_box(uid, with_socket_dir=True)
    assert box.sock is not None
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(box.sock / "s"))
    srv.listen(8)
    srv.setblocking(False)
    os.chmod(box.sock / "s", 0o600)
    if uid is not None:
        os.chown(box.sock / "s", uid, uid)
    try:
        yield box, srv
    finally:
        srv.close()
        box.remove()


async def start(box: Any, uid: int | None, code: str):
    exe, home = interpreter(uid)
    spec = SandboxSpec(argv=(exe, "-I", "-S", "-c", code), work_dir=box.work, bundle_dir=None, runtime_dir=None,
                       socket_dir=box.sock, env={}, limits=Limits(wall_s=20), uid=uid, gid=uid, python_home=home)
    return await launch(spec)


CONNECT_AND_WAIT = """
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect("/run/stockade/s")
s.recv(1)
"""


async def accept(srv: socket.socket) -> socket.socket:
    conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(srv), 10)
    conn.setblocking(True)
    return conn


async def exited(pid: int) -> None:
    """Returns once ``pid`` has exited (its pidfd turns readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await asyncio.wait_for(done, 10)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _uid() -> int | None:
    return POOL.acquire() if POOL else None


def _release(uid: int | None) -> None:
    if POOL and uid is not None:
        POOL.release(uid)


async def test_the_runs_own_sandbox_is_accepted_and_tracked() -> None:
    uid = _uid()
    try:
        async with run_socket(uid) as (box, srv):
            proc = await start(box, uid, CONNECT_AND_WAIT)
            conn = await accept(srv)
            ident = verify_peer(conn, expected_uid=uid, sandbox_pid=proc.pid)
            try:
                assert ident.uid == (uid if uid is not None else os.getuid())
                assert ident.pid not in (proc.pid, os.getpid())
                assert ident.pidfd is not None  # SO_PEERPIDFD works on this kernel (FACTS.md)
                assert peer_alive(ident)
                conn.send(b"x")  # lets it exit
                info = await proc.wait()
                assert info.returncode == 0, info.stderr_tail
                assert not peer_alive(ident)
            finally:
                ident.close()
                conn.close()
    finally:
        _release(uid)


async def test_host_process_with_the_runs_uid_is_rejected() -> None:
    """An outsider running as the very same uid (not in the sandbox's process tree) gets nothing."""
    uid = _uid()
    try:
        async with run_socket(uid) as (box, srv):
            proc = await start(box, uid, "import time; time.sleep(20)")
            kw: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
            outsider = await asyncio.create_subprocess_exec(
                sys.executable if uid is None else "/usr/bin/python3", "-I", "-S", "-c",
                f"import socket,time; s=socket.socket(socket.AF_UNIX); s.connect({str(box.sock / 's')!r}); "
                "time.sleep(5)", env={}, **kw)
            try:
                conn = await accept(srv)
                with pytest.raises(StockadeError) as exc:
                    verify_peer(conn, expected_uid=uid, sandbox_pid=proc.pid)
                assert exc.value.code == "peer.rejected"
                assert "not a process of this run's sandbox" in exc.value.detail
                conn.close()
            finally:
                outsider.kill()
                await outsider.wait()
                proc.kill()
                await proc.wait()
    finally:
        _release(uid)


async def test_root_or_another_uid_is_rejected() -> None:
    uid = _uid()
    try:
        async with run_socket(uid) as (box, srv):
            proc = await start(box, uid, "import time; time.sleep(20)")
            try:
                me = socket.socket(socket.AF_UNIX)
                me.connect(str(box.sock / "s"))  # the supervisor's own uid (root in CI)
                conn = await accept(srv)
                with pytest.raises(StockadeError) as exc:
                    verify_peer(conn, expected_uid=uid, sandbox_pid=proc.pid)
                assert exc.value.code == "peer.rejected"
                conn.close()
                me.close()
                # a socketpair's peer credentials name its creator: never a sandbox process
                a, b = socket.socketpair()
                with pytest.raises(StockadeError):
                    verify_peer(a, expected_uid=None, sandbox_pid=proc.pid)
                a.close()
                b.close()
            finally:
                proc.kill()
                await proc.wait()
    finally:
        _release(uid)


async def test_a_process_of_another_sandbox_is_rejected() -> None:
    uid = _uid()
    try:
        async with run_socket(uid) as (box, srv):
            ours = await start(box, uid, "import time; time.sleep(20)")
            theirs = await start(box, uid, CONNECT_AND_WAIT)  # same uid, same socket dir: only the tree differs
            try:
                conn = await accept(srv)
                with pytest.raises(StockadeError):
                    verify_peer(conn, expected_uid=uid, sandbox_pid=ours.pid)
                ident = verify_peer(conn, expected_uid=uid, sandbox_pid=theirs.pid)
                ident.close()
                conn.close()
            finally:
                for p in (ours, theirs):
                    p.kill()
                    await p.wait()
    finally:
        _release(uid)


async def test_a_peer_that_exited_after_handing_over_its_socket_is_rejected() -> None:
    """The connecting process exits and leaves the socket to a child: SO_PEERCRED still names the dead one."""
    uid = _uid()
    code = """
import os, socket, time
s = socket.socket(socket.AF_UNIX); s.connect("/run/stockade/s")
if os.fork() == 0:
    time.sleep(15); os._exit(0)
os._exit(0)
"""
    try:
        async with run_socket(uid) as (box, srv):
            proc = await start(box, uid, code)
            try:
                conn = await accept(srv)
                pid = int.from_bytes(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[:4], "little")
                await exited(pid)
                with pytest.raises(StockadeError) as exc:
                    verify_peer(conn, expected_uid=uid, sandbox_pid=proc.pid)
                assert "exited" in exc.value.detail
                conn.close()
            finally:
                proc.kill()
                await proc.wait()
    finally:
        _release(uid)
