"""Escape attempts of the 24th attack session: each runs inside a real sandbox.

One got out and is fixed:

- dnotify (``fcntl(fd, F_NOTIFY, DN_ACCESS | DN_MULTISHOT)`` on a directory) is the old face of the
  inotify/fanotify watches seccomp already refused: the mark sits on the inode, not on the mount, so a
  sandbox watching a shared read-only directory (``/runtime``, the same for every run of every tenant;
  ``/usr/lib``; the Python installation) got a signal each time the host or another run read a file in
  it - another tenant's run starting, the host's activity, a covert channel between sandboxes. Now
  seccomp refuses fcntl ``F_NOTIFY`` (the command compared on its low 32 bits, as the kernel reads it).

The others were already blocked; they stay as regression tests, each saying what stops it.
"""

from __future__ import annotations

import asyncio
import errno as E
import os
import socket
import tempfile
import time
from pathlib import Path

import pytest
from _harness import POOL, make_box, run_snippet

from sandbox.spec import Limits

pytestmark = pytest.mark.timeout(60)


def _lim(**kw: object) -> Limits:
    base: dict[str, object] = {"wall_s": 20.0}
    base.update(kw)
    return Limits(**base)  # type: ignore[arg-type]


async def _until(cond, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a condition the other side sets (a file it creates), bounded."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _shared_dir() -> Path:
    """A read-only directory shared by several runs, as ``/runtime`` is in production."""
    d = Path(tempfile.mkdtemp(prefix="stockade-s24-runtime-"))
    os.chmod(d, 0o755)
    (d / "boot.py").write_text("print('boot')\n")
    os.chmod(d / "boot.py", 0o644)
    return d


# ---------------------------------------------------------------- fixed: dnotify on shared directories
_WATCH = r'''
import fcntl, signal, time
got = []
for sig in (signal.SIGIO, signal.SIGRTMIN):
    signal.signal(sig, lambda s, f: got.append(s))
watched = []
for d in ('/runtime', '/usr/lib', os.path.dirname(os.__file__)):
    fd = os.open(d, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_NOTIFY, fcntl.DN_ACCESS | fcntl.DN_MODIFY | fcntl.DN_MULTISHOT)
        out(path=d, ok=True)
        watched.append(fd)
    except OSError as e:
        out(path=d, ok=False, errno=e.errno)
    # the kernel reads the command as an unsigned int: junk in the upper half must not slip past the filter
    try:
        sc(72, fd, fcntl.F_NOTIFY | (1 << 32), fcntl.DN_ACCESS | fcntl.DN_MULTISHOT)
        out(path=d, high_bits=True, ok=True)
    except OSError as e:
        out(path=d, high_bits=True, ok=False, errno=e.errno)
open('/work/armed', 'w').close()
deadline = time.monotonic() + 15
while not os.path.exists('/work/done') and time.monotonic() < deadline:
    time.sleep(0.02)
out(events=len(got), ok=bool(got), errno=0 if got else -1)
'''


async def test_dnotify_sees_no_access_by_the_host_or_other_runs_to_shared_directories() -> None:
    # Escaped before the fix: F_NOTIFY with DN_ACCESS on /runtime and /usr/lib was accepted, and the watcher
    # got SIGIO when the host read /usr/lib/<file> and when a second run read /runtime/boot.py.
    # Protected by: seccomp, fcntl(F_NOTIFY) -> EPERM (low 32 bits of the command compared).
    shared = _shared_dir()
    uid = POOL.acquire() if POOL else None
    box = make_box(uid)
    try:
        watcher = asyncio.ensure_future(run_snippet(_WATCH, limits=_lim(), uid=uid, box=box, runtime_dir=shared))
        await _until(lambda: (box.work / "armed").exists() or watcher.done(), "the watcher to arm")
        # the host reads a file directly in each watched directory; another run reads the shared runtime
        for d in ("/usr/lib", os.path.dirname(os.__file__), str(shared)):
            for name in sorted(os.listdir(d)):
                p = os.path.join(d, name)
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb") as f:
                        f.read(16)
                    break
        other = await run_snippet("out(ok=True, boot=open('/runtime/boot.py').read())\n", limits=_lim(),
                                  runtime_dir=shared)
        assert other.first["boot"] == "print('boot')\n", other.lines
        (box.work / "done").touch()
        r = await watcher
    finally:
        box.remove()
        if POOL and uid is not None:
            POOL.release(uid)
        for f in shared.iterdir():
            f.unlink()
        shared.rmdir()
    assert len(r.lines) == 7, (r.lines, r.info)
    for line in r.lines[:-1]:
        assert line["ok"] is False and line["errno"] == E.EPERM, f"a dnotify watch was set: {line}"
    assert r.lines[-1]["events"] == 0, f"the sandbox saw accesses outside it: {r.lines[-1]}"


async def test_the_runtime_still_uses_fcntl() -> None:
    # The F_NOTIFY rule must not catch the fcntl commands Python and the runtime use.
    code = r'''
import fcntl
fd = os.open('/work/f', os.O_RDWR | os.O_CREAT, 0o600)
fl = fcntl.fcntl(fd, fcntl.F_GETFL)
attempt(fcntl.fcntl, fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
attempt(fcntl.fcntl, fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
attempt(fcntl.fcntl, fd, fcntl.F_DUPFD_CLOEXEC, 10)
attempt(fcntl.lockf, fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
attempt(fcntl.flock, fd, fcntl.LOCK_UN)
'''
    r = await run_snippet(code, limits=_lim())
    assert len(r.lines) == 5 and all(line["ok"] for line in r.lines), (r.lines, r.info)


# ---------------------------------------------------------------- already blocked: regression guards
async def test_no_write_to_a_read_only_bind_through_proc_aliases() -> None:
    # /proc/self/root, /proc/1/root and a reopened /proc/self/fd/N of a read-only descriptor all resolve to the
    # same read-only mounts. The bundle is owned by the run's uid on the host: only the bind stops writes.
    # Protected by: the read-only binds (EROFS), whatever path reaches them.
    uid = POOL.acquire() if POOL else None
    box = make_box(uid)
    bundle = box.root / "bundle"
    bundle.mkdir()
    (bundle / "main.py").write_text("print('hello')\n")
    if uid is not None:
        for p in (bundle, bundle / "main.py"):
            os.chown(p, uid, uid)
    code = r'''
attempt(lambda: open('/proc/self/root/bundle/main.py', 'a'))
attempt(lambda: open('/proc/1/root/bundle/main.py', 'a'))
attempt(lambda: open('/proc/self/root/bundle/new.py', 'w'))
fd = os.open('/bundle/main.py', os.O_RDONLY)
attempt(lambda: open(f'/proc/self/fd/{fd}', 'r+'))
attempt(lambda: open(f'/dev/fd/{fd}', 'a'))
attempt(lambda: open('/proc/1/root/usr/escape', 'w'))
d = os.open('/bundle', os.O_RDONLY | os.O_DIRECTORY)
attempt(lambda: os.open('evil.py', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d))
'''
    try:
        r = await run_snippet(code, limits=_lim(), uid=uid, box=box, bundle_dir=bundle)
        assert (bundle / "main.py").read_text() == "print('hello')\n"
        assert sorted(os.listdir(bundle)) == ["main.py"]
    finally:
        box.remove()
        if POOL and uid is not None:
            POOL.release(uid)
    assert len(r.lines) == 7, (r.lines, r.info)
    for line in r.lines:
        assert line["ok"] is False and line["errno"] == E.EROFS, f"write through a /proc alias: {line}"


async def test_user_namespace_maps_and_proc_sys_cannot_be_rewritten() -> None:
    # bwrap wrote the run's uid/gid maps once; a second write, setgroups, a lower oom_score_adj (the host's
    # OOM killer would pick a neighbour instead) and the machine's sysctls are all refused.
    # Protected by: the one-shot id maps, no capabilities, /proc/sys owned by the host's root.
    code = r'''
def w(p, data):
    fd = os.open(p, os.O_WRONLY)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)
for p, data in (('/proc/self/uid_map', b'0 0 1\n'), ('/proc/self/gid_map', b'0 0 1\n'),
                ('/proc/self/setgroups', b'allow\n'), ('/proc/self/oom_score_adj', b'-1000\n'),
                ('/proc/sys/user/max_user_namespaces', b'10\n'), ('/proc/sys/kernel/ns_last_pid', b'100\n'),
                ('/proc/sys/kernel/core_pattern', b'|/work/x\n'), ('/proc/sys/vm/drop_caches', b'3\n'),
                ('/proc/self/loginuid', b'0')):
    attempt(w, p, data)
'''
    r = await run_snippet(code, limits=_lim())
    assert len(r.lines) == 9, (r.lines, r.info)
    for line in r.lines:
        assert line["ok"] is False and line["errno"] in (E.EPERM, E.EACCES, E.EINVAL, E.EROFS), line


async def test_host_dev_shm_and_hostname_are_not_the_sandboxs() -> None:
    # The host's /dev/shm (POSIX shared memory of every host process) and its hostname stay outside.
    # Protected by: /dev/shm is a link to the sandbox's own /tmp tmpfs; a UTS namespace of its own.
    bait = Path("/dev/shm") / f"stockade-s24-{os.getpid()}"
    have_shm = Path("/dev/shm").is_dir()
    if have_shm:
        bait.write_text("host")
    code = r'''
out(shm=sorted(os.listdir('/dev/shm')), tmp=sorted(os.listdir('/tmp')), node=os.uname().nodename,
    proc=open('/proc/sys/kernel/hostname').read().strip(), etc=open('/etc/hostname').read().strip(),
    domain=open('/proc/sys/kernel/domainname').read().strip())
open('/dev/shm/from-sandbox', 'w').write('x')
attempt(sc, 171, ctypes.cast(ctypes.c_char_p(b'evil'), ctypes.c_void_p).value, 4)  # setdomainname
'''
    try:
        r = await run_snippet(code, limits=_lim())
    finally:
        if have_shm:
            bait.unlink()
    assert len(r.lines) == 2, (r.lines, r.info)
    seen, dom = r.lines
    assert seen["shm"] == [] and seen["tmp"] == [], seen
    assert seen["node"] == seen["proc"] == seen["etc"] == "sandbox", seen
    if socket.gethostname() != "sandbox":
        assert socket.gethostname() not in str(seen), seen
    assert not (Path("/dev/shm") / "from-sandbox").exists()
    assert dom["ok"] is False and dom["errno"] == E.EPERM, dom


async def test_signals_and_pidfds_do_not_reach_host_processes() -> None:
    # kill() is in the escape table; these are the other ways to aim a signal or a handle at a pid:
    # rt_sigqueueinfo, tgkill, pidfd_open and fcntl(F_SETOWN) (SIGIO to the owner on I/O).
    # Protected by: the pid namespace (host pids do not exist inside: ESRCH).
    host = os.getpid()
    code = rf'''
import fcntl
info = (ctypes.c_int * 32)(9, 0, -1)
attempt(sc, 129, {host}, 9, ctypes.addressof(info))  # rt_sigqueueinfo
attempt(sc, 234, {host}, {host}, 9)  # tgkill
attempt(sc, 434, {host}, 0)  # pidfd_open
r, w = os.pipe()
attempt(fcntl.fcntl, r, fcntl.F_SETOWN, {host})
attempt(fcntl.fcntl, r, fcntl.F_SETOWN, -{host})
'''
    r = await run_snippet(code, limits=_lim())
    assert len(r.lines) == 5, (r.lines, r.info)
    for line in r.lines:
        assert line["ok"] is False and line["errno"] == E.ESRCH, f"a host pid was reachable: {line}"


async def test_proc_shows_no_host_process_key_or_socket() -> None:
    # The private /proc: only the sandbox's own processes, a cgroup root of its own, no host keys, no host
    # sockets (the network namespace's /proc/net), and the kernel's memory images unreadable.
    # Protected by: pid, cgroup and net namespaces; the kernel's root-only /proc files.
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(f"\0stockade-s24-{os.getpid()}")
    srv.listen()
    code = r'''
out(pids=sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
    cgroups=sorted({l.split(':', 2)[2].strip() for l in open('/proc/self/cgroup')}),
    keys=open('/proc/keys').read(), unix=open('/proc/net/unix').read().count('stockade-s24'),
    tcp=len(open('/proc/net/tcp').read().splitlines()), shm=len(open('/proc/sysvipc/shm').read().splitlines()))
for p in ('/proc/kcore', '/proc/timer_list', '/proc/slabinfo', '/proc/vmallocinfo', '/proc/self/stack',
          '/proc/kmsg'):
    attempt(lambda p: open(p, 'rb').read(1), p)
'''
    try:
        r = await run_snippet(code, limits=_lim())
    finally:
        srv.close()
    assert len(r.lines) == 7, (r.lines, r.info)
    seen = r.lines[0]
    assert seen["pids"] == [1] and seen["cgroups"] == ["/"], seen
    assert seen["keys"] == "" and seen["unix"] == 0 and seen["tcp"] == 1 and seen["shm"] == 1, seen
    for line in r.lines[1:]:
        assert line["ok"] is False and line["errno"] in (E.ENOENT, E.EACCES, E.EPERM), line


async def test_cachestat_reports_nothing_about_shared_files() -> None:
    # cachestat(2) on a shared read-only file (the interpreter) told which pages other runs and the host had
    # read (CVE-2025-21691, kernels before 6.14 without the fix): the same side channel mincore() lost in 5.0.
    # Protected by: the kernel's write-or-owner check (EPERM); ENOSYS on kernels older than 6.5.
    code = r'''
fd = os.open(os.path.realpath(sys.executable), os.O_RDONLY)
rng, st = (ctypes.c_uint64 * 2)(0, 0), (ctypes.c_uint64 * 8)()
attempt(sc, 451, fd, ctypes.addressof(rng), ctypes.addressof(st), 0)
'''
    r = await run_snippet(code, limits=_lim())
    assert r.first["ok"] is False and r.first["errno"] in (E.EPERM, E.ENOSYS), r.lines
