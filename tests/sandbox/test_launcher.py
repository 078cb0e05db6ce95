"""The launcher's contract: exits, streams, kill semantics, fail-closed checks, uid pool, spec validation."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from _harness import POOL, ROOT, interpreter, limits, make_box, run_snippet

from sandbox import launcher as launcher_mod
from sandbox.checks import check_backend
from sandbox.errors import SandboxError
from sandbox.identity import UidPool
from sandbox.launcher import launch
from sandbox.spec import Limits, SandboxSpec

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]


def _pids_of(uid: int) -> list[int]:
    """Live processes of ``uid`` (zombies excluded: bwrap's pid 1 is reaped by the host's init, lazily)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if d.stat().st_uid == uid and (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(d.name))
            except (OSError, IndexError):
                pass
    return out


def _live_pids() -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(d.name))
            except (OSError, IndexError):
                pass
    return out


def _descendants(pid: int) -> list[int]:
    """Every process whose PPid chain leads to ``pid`` (daemons reparent to the namespace's pid 1)."""
    parents: dict[int, int] = {}
    for p in _live_pids():
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("PPid:"):
                    parents[p] = int(line.split()[1])
        except OSError:
            pass
    out = []
    for p in parents:
        cur = p
        while cur in parents and cur != pid:
            cur = parents[cur]
        if cur == pid and p != pid:
            out.append(p)
    return out


def _spec(box, uid, code: str, **lim) -> SandboxSpec:  # type: ignore[no-untyped-def]
    exe, home = interpreter(uid)
    return SandboxSpec(argv=(exe, "-I", "-S", "-c", code), work_dir=box.work, bundle_dir=None, runtime_dir=None,
                       socket_dir=None, env={}, limits=limits(**lim), uid=uid, gid=uid, python_home=home)


async def test_exit_code_stdin_and_output_tails() -> None:
    code = ("import sys\ndata = sys.stdin.read()\nsys.stdout.write('x' * 200000 + data)\n"
            "sys.stderr.write('oops')\nsys.exit(7)\n")
    r = await run_snippet(code, prelude=False, stdin=b"hello-from-stdin")
    assert (r.info.returncode, r.info.signal, r.info.reason) == (7, None, None)
    assert r.info.stdout_tail.endswith(b"xhello-from-stdin")
    assert len(r.info.stdout_tail) == launcher_mod.TAIL_BYTES
    assert r.info.output_bytes == 200000 + len(b"hello-from-stdin") + 4
    assert r.info.stderr_tail == b"oops"


async def test_work_dir_is_the_runs_and_files_belong_to_its_uid() -> None:
    r = await run_snippet("open('/work/out.txt', 'w').write(str(os.getuid()))\n", keep_box=True)
    try:
        assert r.info.returncode == 0, r.info.stderr_tail
        assert r.work is not None
        st = (r.work / "out.txt").stat()
        want = r.uid if POOL else os.getuid()
        assert st.st_uid == want and (r.work / "out.txt").read_text() == str(want)
    finally:
        if r.work is not None:
            import shutil

            shutil.rmtree(r.work.parent, ignore_errors=True)


async def test_kill_takes_down_the_whole_pid_namespace_fast() -> None:
    """Daemonized grandchildren (setsid + double fork) die with the sandbox, in well under a second."""
    uid = POOL.acquire() if POOL else None
    box = make_box(uid, with_socket_dir=True)
    assert box.sock is not None
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(box.sock / "s"))
    srv.listen(1)
    srv.setblocking(False)
    if uid is not None:
        os.chown(box.sock / "s", uid, uid)
    code = ("import os, socket, time\n"
            "for _ in range(3):\n"
            "    r, w = os.pipe()\n"
            "    if os.fork() == 0:\n        os.setsid()\n"
            "        if os.fork() == 0:\n            os.close(w); time.sleep(60)\n        os._exit(0)\n"
            "    os.close(w); os.wait(); os.read(r, 1)\n"  # EOF once the daemon closed its end: it is running
            "s = socket.socket(socket.AF_UNIX); s.connect('/run/stockade/s')\n"
            "time.sleep(60)\n")
    try:
        spec = _spec(box, uid, code)
        spec = SandboxSpec(**{**spec.__dict__, "socket_dir": box.sock})
        proc = await launch(spec)
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(srv), 10)
        conn.close()
        assert proc.uid == (uid if uid is not None else os.getuid())
        assert proc.init_pid is not None
        tree = [proc.pid, proc.init_pid, *_descendants(proc.init_pid)]
        assert len(tree) >= 5, tree  # bwrap, python (pid 1 inside), 3 daemons
        t0 = time.monotonic()
        proc.kill()
        info = await proc.wait()
        took = time.monotonic() - t0
        assert took < 0.5, took
        assert info.signal == signal.SIGKILL and info.reason is None
        assert not set(tree) & set(_live_pids()), "a process of the sandbox survived kill()"
        proc.kill()  # idempotent after exit
    finally:
        srv.close()
        box.remove()
        if POOL and uid is not None:
            POOL.release(uid)


async def test_leftover_daemons_die_when_the_main_process_exits() -> None:
    uid = POOL.acquire() if POOL else None
    box = make_box(uid)
    code = ("import os, time\n"
            "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n")
    try:
        proc = await launch(_spec(box, uid, code))
        info = await asyncio.wait_for(proc.wait(), 10)
        assert info.returncode == 0
        if uid is not None:
            assert _pids_of(uid) == []
    finally:
        box.remove()
        if POOL and uid is not None:
            POOL.release(uid)


@pytest.mark.skipif(not ROOT, reason="uses a pool uid to find the sandbox's processes")
def test_sandbox_dies_with_the_supervisor() -> None:
    """--die-with-parent: SIGKILL the process that launched the sandbox and the sandbox goes too."""
    assert POOL is not None
    uid = POOL.acquire()
    box = make_box(uid)
    exe, home = interpreter(uid)
    helper = f"""
import asyncio, sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from sandbox.launcher import launch
from sandbox.spec import Limits, SandboxSpec
async def main():
    spec = SandboxSpec(argv=({exe!r}, "-I", "-S", "-c", "import time; print('up', flush=True); time.sleep(60)"),
        work_dir=Path({str(box.work)!r}), bundle_dir=None, runtime_dir=None, socket_dir=None, env={{}},
        limits=Limits(wall_s=60), uid={uid}, gid={uid}, python_home=Path({str(home)!r}))
    p = await launch(spec)
    print(p.pid, flush=True)
    await p.wait()
asyncio.run(main())
"""
    sup = subprocess.Popen([sys.executable, "-c", helper], stdout=subprocess.PIPE, env={})
    try:
        assert sup.stdout is not None
        bwrap_pid = int(sup.stdout.readline())
        deadline = time.monotonic() + 10
        while len(_pids_of(uid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_pids_of(uid)) >= 2  # bwrap and the sandboxed python
        sup.kill()
        sup.wait()
        deadline = time.monotonic() + 5
        while _pids_of(uid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _pids_of(uid) == [], "sandbox outlived its supervisor"
        assert bwrap_pid not in _pids_of(uid)
    finally:
        if sup.poll() is None:
            sup.kill()
        box.remove()
        POOL.release(uid)


@pytest.mark.skipif(not ROOT, reason="cgroup v1 placement needs root")
async def test_cgroup_bounds_the_run_as_a_whole() -> None:
    """Two processes under RLIMIT_AS=128 MB each, together over the run's memory: the cgroup OOM-kills."""
    code = ("import os, time\n"
            "pid = os.fork()\n"
            "x = bytearray(100 << 20)\n"
            "if pid == 0:\n    time.sleep(10); os._exit(0)\n"
            "_, st = os.waitpid(pid, 0)\n"
            "os._exit(3 if os.WIFSIGNALED(st) else 0)\n")
    r = await run_snippet(code, prelude=False, limits=limits(memory_mb=128, tmpfs_mb=8))
    import glob

    if not glob.glob("/sys/fs/cgroup/memory/cgroup.procs"):
        pytest.skip("no cgroup v1 memory controller here")
    assert r.info.reason == "limit.memory", r.info


async def test_fail_closed_when_bwrap_is_missing() -> None:
    box = make_box(None)
    try:
        spec = _spec(box, POOL.base if POOL else None, "pass")
        with pytest.raises(SandboxError) as exc:
            await launch(spec, bwrap="/nonexistent/bwrap")
        assert exc.value.code == "sandbox.unavailable"
        problems = check_backend("/nonexistent/bwrap")
        assert len(problems) == 1 and "bubblewrap" in problems[0]
    finally:
        box.remove()


def test_backend_is_ready_here() -> None:
    assert check_backend() == []


@pytest.mark.skipif(not ROOT, reason="root-only refusals")
async def test_root_refusals() -> None:
    assert POOL is not None
    box = make_box(None)
    try:
        exe, home = interpreter(POOL.base)
        no_uid = SandboxSpec(argv=(exe, "-c", "pass"), work_dir=box.work, bundle_dir=None, runtime_dir=None,
                             socket_dir=None, env={}, limits=Limits(), python_home=home)
        with pytest.raises(SandboxError, match="no sandbox uid"):
            await launch(no_uid)
        with tempfile.TemporaryDirectory() as hidden:
            os.chmod(hidden, 0o700)  # like /root: the pool uid cannot enter
            (Path(hidden) / "py").mkdir()
            bad = SandboxSpec(argv=(exe, "-c", "pass"), work_dir=box.work, bundle_dir=None, runtime_dir=None,
                              socket_dir=None, env={}, limits=Limits(), uid=POOL.base, gid=POOL.base,
                              python_home=Path(hidden) / "py")
            with pytest.raises(SandboxError, match="cannot reach"):
                await launch(bad)
    finally:
        box.remove()


def test_uid_pool() -> None:
    pool = UidPool(500_000, 2)
    a, b = pool.acquire(), pool.acquire()
    assert {a, b} == {500_000, 500_001} and pool.in_use == 2
    with pytest.raises(SandboxError) as exc:
        pool.acquire()
    assert exc.value.code == "sandbox.unavailable"
    pool.release(a)
    assert pool.acquire() == a
    with pytest.raises(ValueError):
        pool.release(123)
    with pytest.raises(ValueError):
        UidPool(65_000, 1000)  # would hand out the overflow uid
    with pytest.raises(ValueError):
        UidPool(0, 10)


def test_spec_and_limits_validation(tmp_path: Path) -> None:
    ok = dict(work_dir=tmp_path, bundle_dir=None, runtime_dir=None, socket_dir=None, env={}, limits=Limits())
    with pytest.raises(ValueError):
        SandboxSpec(argv=(), **ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SandboxSpec(argv=("x",), **{**ok, "env": {"A=B": "1"}})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SandboxSpec(argv=("x",), uid=1000, **ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SandboxSpec(argv=("x",), extra_ro_binds=((tmp_path, "relative"),), **ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Limits(memory_mb=0)
    with pytest.raises(ValueError):
        Limits(cpu_s=-1)


async def test_the_supervisor_leaks_no_descriptors() -> None:
    await run_snippet("pass", prelude=False)  # first use builds the seccomp program, probes bwrap
    before = sorted(os.listdir("/proc/self/fd"))
    results = await asyncio.gather(*(run_snippet("print('x' * 1000)", prelude=False) for _ in range(8)))
    assert all(r.info.returncode == 0 for r in results)
    killed = await run_snippet("import time; time.sleep(30)", prelude=False, limits=limits(wall_s=0.3))
    assert killed.info.reason == "limit.wall"
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_meaningless_peer_credentials_are_reported() -> None:
    from sandbox.checks import _judge

    good = ["2", "1", "0000000000000000", "blocked"]
    assert _judge(good, 1234, 300_001, 300_001) == []
    assert any("pid 0" in p for p in _judge(good, 0, 300_001, 300_001))
    assert any("uid 65534" in p for p in _judge(good, 1234, 65534, 300_001))
    assert len(_judge(["0", "0", "00000000000000ff", "open"], 1234, 300_001, 300_001)) == 4


def test_exit_classification() -> None:
    from sandbox._exit import classify

    def c(status: int, **kw: object) -> tuple[int, int | None, str | None]:
        args = {"imposed": None, "cpu_s": 10.0, "elapsed_s": 1.0, "memory_oom": False, "stderr_tail": b""}
        args.update(kw)
        return classify(wait_status=status, **args)  # type: ignore[arg-type]

    assert c(0) == (0, None, None)
    assert c(3 << 8) == (3, None, None)
    assert c((128 + 24) << 8) == (152, 24, "limit.cpu")  # SIGXCPU
    assert c((128 + 9) << 8, elapsed_s=11.0) == (137, 9, "limit.cpu")  # hard CPU limit
    assert c((128 + 9) << 8) == (137, 9, None)  # a SIGKILL we cannot explain
    assert c((128 + 9) << 8, memory_oom=True)[2] == "limit.memory"
    assert c(1 << 8, stderr_tail=b"Traceback...\nMemoryError\n")[2] == "limit.memory"
    assert c(1 << 8, stderr_tail=b"OSError: [Errno 27] File too large")[2] == "limit.disk"
    assert c(0, stderr_tail=b"MemoryError")[2] is None  # a clean exit is never a limit
    assert c(9, imposed="limit.wall") == (-9, 9, "limit.wall")  # bwrap itself killed by us


@pytest.mark.skipif(not ROOT, reason="makes a process of a pool uid in a new pid namespace")
async def test_orphaned_sandbox_children_are_reaped_and_live_sandboxes_left_alone(tmp_path: Path) -> None:
    """A supervisor SIGKILLed while bwrap sets a sandbox up leaves bwrap's namespace child blocked for
    ever (seen after each worker kill in the suite). sandbox.orphans finds exactly those - bwrap, pid 1
    of its own pid namespace, its parent not a bwrap - and leaves a live sandbox of the same uids alone."""
    import shutil

    from sandbox.orphans import find_orphans, reap_orphans

    assert POOL is not None
    lost, live = POOL.acquire(), POOL.acquire()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "bwrap"  # the same shape: a process named bwrap as pid 1 of a fresh pid namespace
    shutil.copy("/bin/sleep", fake)
    for p in (tmp_path, bindir, fake):
        p.chmod(0o755)
    parent = subprocess.Popen(["unshare", "--pid", "--fork", "setpriv", f"--reuid={lost}", f"--regid={lost}",
                               "--clear-groups", str(fake), "60"])
    box = make_box(live)
    exe, home = interpreter(live)
    spec = SandboxSpec(argv=(exe, "-I", "-S", "-c", "import time; print('up', flush=True); time.sleep(30)"),
                       work_dir=box.work, bundle_dir=None, runtime_dir=None, socket_dir=None, env={},
                       limits=Limits(wall_s=30), uid=live, gid=live, python_home=home)
    proc = await launch(spec)
    try:
        # external processes starting: nothing to await but their /proc entries
        await asyncio.to_thread(_wait_for, lambda: _pids_of(lost) and len(_pids_of(live)) >= 2, 10)
        orphan = _pids_of(lost)
        assert len(orphan) == 1 and len(_pids_of(live)) >= 2
        parent.kill()  # its supervisor dies: the child is left on its own, parented to init
        parent.wait()
        assert find_orphans({lost, live}) == orphan  # the live sandbox's namespace child has its bwrap parent
        assert reap_orphans({lost, live}) == 1
        await asyncio.to_thread(_wait_for, lambda: not _pids_of(lost), 5)
        assert _pids_of(lost) == []
        assert len(_pids_of(live)) >= 2  # untouched: still running
        assert reap_orphans({os.getuid()}) == 0  # only the given uids
    finally:
        if parent.poll() is None:
            parent.kill()
        proc.kill()
        await proc.wait()
        box.remove()
        POOL.release(lost)
        POOL.release(live)


def _wait_for(pred: Any, within_s: float) -> None:
    """Poll another process's /proc state (no event to wait on), in a thread off the loop."""
    deadline = time.monotonic() + within_s
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.02)

