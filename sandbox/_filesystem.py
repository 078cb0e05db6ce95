"""The filesystem view: system libraries and the Python runtime read-only, and nothing else of the host.

Layout inside:
    /usr (+ /bin /lib /lib64 ... as on the host)   read-only
    <python home>                                  read-only, at its host path (libpython's rpath)
    /etc                                           synthetic passwd/group/hostname/hosts/nsswitch + ld.so.cache
    /dev                                           null zero random urandom (and /dev/fd links)
    /proc                                          the sandbox's own pid namespace
    /tmp                                           size-capped tmpfs
    /work                                          the run's work dir, read-write (cwd)
    /bundle /runtime                               read-only
    /run/stockade                                  the run's socket dir, read-only (connect still works)
    /                                              remounted read-only at the end
No /home, /root, /etc of the host, data dir, other runs or repo sources.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sandbox._access import unreachable_part
from sandbox._plan import Plan
from sandbox.errors import SandboxError
from sandbox.spec import SandboxSpec

__all__ = ["apply", "python_home"]

_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_DEVICES = ("null", "zero", "random", "urandom")
_HOST_ETC = ("/etc/ld.so.cache", "/etc/localtime")  # neither holds anything secret


def python_home(spec: SandboxSpec) -> Path:
    return Path(os.path.realpath(spec.python_home or sys.base_prefix))


def _bind(plan: Plan, src: Path, dest: str, *, rw: bool = False, need_read: bool = True) -> None:
    ident = plan.identity
    if not src.exists():
        raise SandboxError("sandbox.unavailable", f"the directory to bind at {dest} ({src}) does not exist")
    if ident.switch:
        blocked = unreachable_part(src, ident.uid, ident.gid, need_read=need_read)
        if blocked is not None:
            raise SandboxError(
                "sandbox.unavailable",
                f"sandbox uid {ident.uid} cannot reach {src} (no access to {blocked}) to bind it at {dest}; "
                "make it world-searchable or pick an interpreter outside it (sandbox.interpreter)",
            )
    plan.add("--bind" if rw else "--ro-bind", str(src), dest)


def _etc(spec: SandboxSpec, plan: Plan) -> None:
    uid, gid = plan.identity.uid, plan.identity.gid
    files = {
        "/etc/passwd": f"root:x:0:0:root:/:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}:sandbox:/work:/usr/sbin/nologin\n"
                       "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "/etc/group": f"root:x:0:\nsandbox:x:{gid}:\nnogroup:x:65534:\n",
        "/etc/hostname": f"{spec.hostname}\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost {spec.hostname}\n::1\tlocalhost\n",
        "/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
    }
    for dest, content in files.items():
        plan.add("--perms", "0444", "--ro-bind-data", str(plan.data_fd(content.encode())), dest)
    for path in _HOST_ETC:
        plan.add("--ro-bind-try", path, path)


def _dev(plan: Plan) -> None:
    plan.add("--size", str(64 * 1024), "--tmpfs", "/dev")
    for name in _DEVICES:
        plan.add("--dev-bind", f"/dev/{name}", f"/dev/{name}")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("shm", "/tmp")):
        # shm: POSIX semaphores and shared memory (multiprocessing's locks, Pool, ProcessPoolExecutor) live
        # in /dev/shm; the sandbox's own size-capped /tmp holds them
        plan.add("--symlink", target, f"/dev/{name}")
    # the tmpfs belongs to the sandbox's own uid (bwrap maps its setup root to it): make it read-only
    plan.add("--remount-ro", "/dev")


def apply(spec: SandboxSpec, plan: Plan) -> None:
    plan.add("--ro-bind", "/usr", "/usr")
    for name in _TOP_LEVEL:
        host = Path("/") / name
        if host.is_symlink():
            plan.add("--symlink", os.readlink(host), f"/{name}")
        elif host.is_dir():
            plan.add("--ro-bind", str(host), f"/{name}")
    home = python_home(spec)
    if not (home == Path("/usr") or Path("/usr") in home.parents):
        _bind(plan, home, str(home))
    _etc(spec, plan)
    _dev(plan)
    plan.add("--proc", "/proc")
    plan.add("--perms", "01777", "--size", str(spec.limits.tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp")
    _bind(plan, Path(spec.work_dir), "/work", rw=True)
    if spec.bundle_dir is not None:
        _bind(plan, Path(spec.bundle_dir), "/bundle")
    if spec.runtime_dir is not None:
        _bind(plan, Path(spec.runtime_dir), "/runtime")
    if spec.socket_dir is not None:
        # read-only: connecting to a socket needs no write access to the mount, creating files does
        _bind(plan, Path(spec.socket_dir), "/run/stockade")
    for src, dest in spec.extra_ro_binds:
        _bind(plan, Path(src), dest)
    plan.add("--remount-ro", "/", "--chdir", "/work")
