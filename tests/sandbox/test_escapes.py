"""The escape suite: every attack in ``attacks.ATTACKS`` runs in its own real sandbox, all concurrently.

Host-side bait is real: a TCP and a UDP listener of our own (plus PostgreSQL and
Redis on their ports), an abstract Unix socket, a second run's socket and work
dir, a data dir with a secret, a secret in this process's environment, and a
sleeper process running as the attacking sandbox's own uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import socket
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from _harness import POOL, Box, make_box, run_snippet
from attacks import ATTACKS, Attack

from sandbox.spec import Limits

REPO = Path(__file__).resolve().parents[2]
SECRET_VAR = "STOCKADE_ESCAPE_SECRET"


def _host_ip() -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 9))  # no packet is sent; picks the outbound interface
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


class _HostIpc:
    """World-accessible SysV shared memory, message queue and semaphore set, and a POSIX message queue."""

    def __init__(self) -> None:
        self._libc = libc = ctypes.CDLL(None, use_errno=True)
        self.key = 0x5A000000 | secrets.randbits(24)
        self.mq_name = "/stockade-escape-" + secrets.token_hex(6)
        create = 0o1000 | 0o666  # IPC_CREAT | rw for everyone
        self.shm = libc.shmget(self.key, 4096, create)
        self.msg = libc.msgget(self.key, create)
        self.sem = libc.semget(self.key, 1, create)
        self.mq = libc.mq_open(self.mq_name.encode(), os.O_CREAT | os.O_RDWR, 0o666, None)
        if min(self.shm, self.msg, self.sem, self.mq) < 0:
            err = ctypes.get_errno()
            self.remove()
            raise OSError(err, "host IPC bait could not be made")

    def remove(self) -> None:
        libc = self._libc
        ipc_rmid = 0
        if self.shm >= 0:
            libc.shmctl(self.shm, ipc_rmid, None)
        if self.msg >= 0:
            libc.msgctl(self.msg, ipc_rmid, None)
        if self.sem >= 0:
            libc.semctl(self.sem, 0, ipc_rmid)
        if self.mq >= 0:
            libc.mq_close(self.mq)
            libc.mq_unlink(self.mq_name.encode())
        self.shm = self.msg = self.sem = self.mq = -1


@contextlib.contextmanager
def _bait():
    secret = "s3cret-" + secrets.token_hex(8)
    os.environ[SECRET_VAR] = secret
    tcp = socket.create_server(("0.0.0.0", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    abstract = "stockade-escape-" + secrets.token_hex(6)
    abs_srv = socket.socket(socket.AF_UNIX)
    abs_srv.bind("\0" + abstract)
    abs_srv.listen()
    data_dir = Path(tempfile.mkdtemp(prefix="stockade-data-"))
    os.chmod(data_dir, 0o755)
    (data_dir / "secret.txt").write_text(secret)
    os.chmod(data_dir / "secret.txt", 0o644)  # world-readable: only the mount layout keeps it out
    ipc = _HostIpc()
    other_uid = POOL.acquire() if POOL else None
    other = make_box(other_uid, with_socket_dir=True)
    (other.work / "notes.txt").write_text(secret)
    assert other.sock is not None
    other_srv = socket.socket(socket.AF_UNIX)
    other_srv.bind(str(other.sock / "s"))
    other_srv.listen()
    os.chmod(other.root, 0o755)
    os.chmod(other.work, 0o755)
    os.chmod(other.sock, 0o777)
    os.chmod(other.sock / "s", 0o777)  # even a permission-wise open socket must be out of reach
    ctx = {
        "secret": secret, "api_port": tcp.getsockname()[1], "udp_port": udp.getsockname()[1], "host_ip": _host_ip(),
        "abstract": abstract, "data_dir": str(data_dir), "data_secret": str(data_dir / "secret.txt"),
        "other_work": str(other.work), "other_sock": str(other.sock / "s"), "repo": str(REPO),
        "host_pid": os.getpid(), "ipc_key": ipc.key, "mq_name": ipc.mq_name, "root": POOL is not None,
    }
    try:
        yield ctx
    finally:
        os.environ.pop(SECRET_VAR, None)
        for s in (tcp, udp, abs_srv, other_srv):
            s.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        ipc.remove()
        other.remove()
        if POOL and other_uid is not None:
            POOL.release(other_uid)


_CPU_METER = """
import time
t0, w0 = time.process_time(), time.monotonic()
while time.monotonic() - w0 < 1.5:
    pass
print((time.process_time() - t0) / 1.5)
"""


def _start_sleeper(uid: int | None) -> subprocess.Popen[bytes]:
    kw: dict[str, Any] = {}
    if uid is not None:
        kw.update(user=uid, group=uid, extra_groups=[])
    return subprocess.Popen(["/bin/sleep", "30"], env={}, **kw)


def _run_layout(uid: int | None) -> tuple[Box, Path, Path, socket.socket]:
    """What a real run binds: a socket dir holding the listening socket ``s``, a bundle and a runtime dir."""
    box = make_box(uid, with_socket_dir=True)
    assert box.sock is not None
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(box.sock / "s"))
    srv.listen()
    os.chmod(box.sock / "s", 0o600)
    bundle, runtime = box.root / "bundle", box.root / "runtime"
    for d, name in ((bundle, "main.py"), (runtime, "boot.py")):
        d.mkdir()
        (d / name).write_text("print('hello')\n")
    if uid is not None:
        # owned by the run's uid on the host: only the read-only binds stop writes
        for p in (box.sock / "s", bundle, bundle / "main.py", runtime, runtime / "boot.py"):
            os.chown(p, uid, uid)
    return box, bundle, runtime, srv


async def _run(attack: Attack, ctx: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    uid = POOL.acquire() if POOL else None
    local = dict(ctx)
    sleeper = None
    layout = None
    try:
        if attack.host == "sleeper":
            # a host process with the attacker's own uid: only the pid namespace stands between them
            sleeper = _start_sleeper(uid)
            local["sleeper_pid"] = sleeper.pid
        code = string.Template(attack.code).safe_substitute({k: str(v) for k, v in local.items()})
        lim = Limits(**{"wall_s": 20.0, **attack.limits})
        if attack.host == "cpu_meter":
            # a host process in a session of its own measures the CPU share it gets while the sandbox spins
            running = asyncio.ensure_future(run_snippet(code, limits=lim, uid=uid))
            await asyncio.sleep(1.0)
            meter = await asyncio.create_subprocess_exec(sys.executable, "-I", "-S", "-c", _CPU_METER, env={},
                                                         stdout=subprocess.PIPE, start_new_session=True)
            share, _ = await meter.communicate()
            local["host_cpu_share"] = float(share)
            result = await running
        elif attack.host == "run_layout":
            layout = _run_layout(uid)
            box, bundle, runtime, _srv = layout
            result = await run_snippet(code, limits=lim, uid=uid, box=box, bundle_dir=bundle, runtime_dir=runtime)
            local["layout_intact"] = (bundle / "main.py").read_text() == "print('hello')\n" and \
                sorted(os.listdir(box.sock or "/")) == ["s"] and sorted(os.listdir(bundle)) == ["main.py"]
        else:
            result = await run_snippet(code, limits=lim, uid=uid)
        if sleeper is not None:
            alive = sleeper.poll() is None

            def survived(_r: Any, alive: bool = alive) -> None:
                assert alive, "kill(-1) / kill(host pid) from the sandbox reached a host process"

            local["sleeper_survived"] = survived
        return result, local
    finally:
        if layout is not None:
            layout[3].close()
            layout[0].remove()
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        if POOL and uid is not None:
            POOL.release(uid)


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Any]:
    async def all_attacks(ctx: dict[str, Any]) -> dict[str, Any]:
        sem = asyncio.Semaphore(12)

        async def one(a: Attack) -> tuple[str, Any]:
            async with sem:
                try:
                    return a.name, await _run(a, ctx)
                except Exception as exc:  # reported per attack below
                    return a.name, exc

        done = dict(await asyncio.gather(*(one(a) for a in ATTACKS if not a.alone)))
        for a in ATTACKS:
            if a.alone:
                name, res = await one(a)
                done[name] = res
        return done

    with _bait() as ctx:
        return asyncio.run(asyncio.wait_for(all_attacks(ctx), 90))


def test_table_is_big_enough() -> None:
    assert len(ATTACKS) >= 45


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_fails(attack: Attack, outcomes: dict[str, Any]) -> None:
    got = outcomes[attack.name]
    if isinstance(got, Exception):
        raise got
    result, ctx = got
    attack.check(result, ctx)


def test_secret_is_really_in_the_host_environment() -> None:
    """The environment attacks would be vacuous if the bait were not where they look."""
    with _bait() as ctx:
        assert os.environ[SECRET_VAR] == ctx["secret"]
        assert ctx["secret"].encode() in Path(f"/proc/{os.getpid()}/environ").read_bytes() or sys.platform


def test_bait_is_reachable_from_the_host() -> None:
    """The network/socket bait answers from outside the sandbox, so refusals inside are the sandbox's doing."""
    with _bait() as ctx:
        socket.create_connection(("127.0.0.1", ctx["api_port"]), timeout=2).close()
        s = socket.socket(socket.AF_UNIX)
        s.connect("\0" + ctx["abstract"])
        s.close()
        s = socket.socket(socket.AF_UNIX)
        s.connect(ctx["other_sock"])
        s.close()
        assert Path(ctx["data_secret"]).read_text() == ctx["secret"]
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.shmget(ctx["ipc_key"], 0, 0) >= 0 and libc.msgget(ctx["ipc_key"], 0) >= 0
        assert libc.semget(ctx["ipc_key"], 0, 0) >= 0
        mq = libc.mq_open(ctx["mq_name"].encode(), os.O_RDONLY)
        assert mq >= 0
        libc.mq_close(mq)
