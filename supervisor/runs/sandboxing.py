"""From a run to a SandboxSpec: paths, limits (settings narrowed by the bundle), env."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sandbox.runtime as _runtime_pkg
from sandbox.spec import Limits, SandboxSpec
from supervisor.errors import StockadeError
from supervisor.rmtree import remove_tree
from supervisor.settings import Settings

__all__ = ["RUNTIME_DIR", "RunDirs", "build_spec", "limits_for", "listen_run_socket", "make_run_dirs", "sandbox_python",
           "sweep_dead_slots", "unix_listener"]

RUNTIME_DIR = Path(_runtime_pkg.__file__).resolve().parent
SOCKET_NAME = "s"
_TMP_STALE_S = 60.0  # a lock file still under its temporary name after this long lost its holder


class _Held:
    """The ``flock`` this process holds on ``<run dir>.lock`` while it uses the directory (warm slots): the
    kernel lets go of it when the process dies, however it dies, so any node can tell a dead worker's
    directories (``sweep_dead_slots``) from a live one's."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:  # once: closing a number twice could close a descriptor opened since
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(fd)


@dataclass(frozen=True)
class RunDirs:
    root: Path
    work: Path
    sock_dir: Path
    held: _Held | None = None

    @property
    def socket_path(self) -> Path:
        return self.sock_dir / SOCKET_NAME

    def remove(self) -> None:
        remove_tree(self.root)  # any depth: a bundle's tree 1,500 deep was a RecursionError here
        if self.held is not None:  # after the directory: a lock file with no directory is swept, never the reverse
            self.held.release()


def _hold(runs: Path, name: str) -> _Held:
    """Create ``runs/<name>.lock`` already locked: made and locked under a temporary name, then renamed, so a
    sweep never finds it unlocked while its holder lives."""
    runs.mkdir(parents=True, exist_ok=True)
    tmp = runs / f".{name}.lock.{os.getpid()}"
    fd = os.open(tmp, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, runs / f"{name}.lock")
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return _Held(runs / f"{name}.lock", fd)


def sweep_dead_slots(data_dir: Path) -> int:
    """Remove the run directories whose holder died (a SIGKILLed worker's warm slots, and the run that had
    taken one: tenant files): every ``runs/*.lock`` nobody holds, with its directory. Returns how many."""
    runs, removed = data_dir / "runs", 0
    try:
        names = [p for p in runs.iterdir() if ".lock" in p.name]
    except OSError:
        return 0
    locks = [p for p in names if p.name.endswith(".lock") and not p.name.startswith(".")]
    for tmp in (p for p in names if p.name.startswith(".")):  # a holder killed between creating and renaming
        with contextlib.suppress(OSError):
            if time.time() - tmp.lstat().st_mtime > _TMP_STALE_S:
                tmp.unlink()
    for lock in locks:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # released meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its worker lives
            os.close(fd)
            continue
        try:
            remove_tree(runs / lock.name[: -len(".lock")])
            with contextlib.suppress(OSError):
                os.unlink(lock)
            removed += 1
        finally:
            os.close(fd)
    return removed


def make_run_dirs(settings: Settings, run_id: str, uid: int | None, gid: int | None, *, held: bool = False) -> RunDirs:
    """``held``: the directory is locked for as long as this process uses it (``_Held``): a warm slot, whose
    name no run's end would ever clean up after a killed worker."""
    runs = settings.data_dir / "runs"
    lock = _hold(runs, run_id) if held else None
    root = (runs / run_id).resolve()
    try:
        if root.exists():
            remove_tree(root)
        work, sock = root / "work", root / "sock"
        root.mkdir(parents=True, mode=0o711)
        work.mkdir(mode=0o700)
        sock.mkdir(mode=0o700)
        if uid is not None and os.geteuid() == 0:
            # only the run's own uid may enter its work and socket directories
            for p in (work, sock):
                os.chown(p, uid, gid if gid is not None else uid)
    except BaseException:
        RunDirs(root=root, work=root, sock_dir=root, held=lock).remove()
        raise
    return RunDirs(root=root, work=work, sock_dir=sock, held=lock)


# Python 3.13's unix servers remove their socket file when closed. The run's server closes once its sandbox has
# connected, and the file stays, as on 3.11 and 3.12: whoever connects later (the bundle, an outsider) is refused
# by the kernel, the same on every Python (README: an outsider gets nothing from a run's socket).
_KEEP_SOCKET_FILE: dict[str, Any] = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}


_SUN_PATH = 100  # sun_path holds 108 bytes, NUL included; a margin for the kernel's and Python's own checks


def unix_listener(path: Path) -> socket.socket:
    """A Unix stream socket bound at ``path``, however long. A path longer than ``sun_path`` is bound through
    its folder's descriptor (``/proc/self/fd/N/name`` resolves to the same folder): a ``STOCKADE_DATA_DIR`` of
    ~80 characters made every run fail ("AF_UNIX path too long", reported as a lost worker)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(path)) <= _SUN_PATH:
            sock.bind(os.fspath(path))
        else:
            fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.bind(f"/proc/self/fd/{fd}/{path.name}")
            finally:
                os.close(fd)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def listen_run_socket(
    on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], dirs: RunDirs,
    settings: Settings, uid: int | None, gid: int | None,
) -> asyncio.AbstractServer:
    """The run's Unix socket, listening; readable and writable by the run's uid only."""
    server = await asyncio.start_unix_server(on_connect, sock=unix_listener(dirs.socket_path),
                                             limit=settings.sandbox_max_frame_bytes + 16, **_KEEP_SOCKET_FILE)
    os.chmod(dirs.socket_path, 0o600)
    if uid is not None and os.geteuid() == 0:
        os.chown(dirs.socket_path, uid, gid if gid is not None else uid)
    return server


def _narrow(m: dict[str, Any], key: str, default: float) -> Any:
    v = m.get(key)
    return min(default, v) if isinstance(v, (int, float)) and v > 0 else default


def events_per_s_for(settings: Settings, manifest_limits: dict[str, Any] | None) -> int:
    """The run session's event rate: the setting, or the bundle's ``limits.max_events_per_s`` if lower.
    (The session's byte cap is ``Limits.max_output_bytes``: one number for stdout + stderr and for events.)"""
    return int(_narrow(manifest_limits or {}, "max_events_per_s", settings.sandbox_max_events_per_s))


def limits_for(settings: Settings, manifest_limits: dict[str, Any] | None) -> tuple[Limits, float]:
    """Settings are the ceiling; a bundle may only ask for less. Returns (limits, wall timeout)."""
    m = manifest_limits or {}

    def narrow(key: str, default: float) -> Any:
        return _narrow(m, key, default)

    timeout = narrow("timeout_s", settings.run_timeout_max_s)
    if "timeout_s" not in m:
        timeout = min(settings.run_timeout_default_s, settings.run_timeout_max_s)
    try:
        limits = Limits(
            memory_mb=int(narrow("memory_mb", settings.sandbox_memory_mb)),
            max_procs=int(narrow("max_procs", settings.sandbox_max_procs)),
            max_open_files=int(narrow("max_open_files", settings.sandbox_max_open_files)),
            max_file_mb=int(narrow("max_file_mb", settings.sandbox_max_file_mb)),
            cpu_s=float(narrow("cpu_s", settings.sandbox_cpu_s)),  # int() made cpu_s: 0.5 a 0 (refused)
            wall_s=float(timeout) + 5.0,  # the worker's own timer fires first; this is the backstop
            workdir_mb=int(narrow("workdir_mb", settings.sandbox_workdir_mb)),
            tmpfs_mb=int(narrow("tmpfs_mb", settings.sandbox_tmpfs_mb)),
            # stdout + stderr: was left at Limits' own 8 MiB whatever the operator set or the bundle asked
            max_output_bytes=int(narrow("max_output_bytes", settings.sandbox_max_output_bytes)),
        )
    except ValueError as exc:  # a request no sandbox can meet (memory_mb: 8): the bundle's error, not the worker's
        raise StockadeError("bundle.invalid", f"the bundle's limits cannot be met: {exc}") from None
    return limits, float(timeout)


def sandbox_python(settings: Settings, uid: int | None, gid: int | None) -> tuple[str, Path]:
    """(interpreter, installation to bind): one the run's uid can reach (a pyenv under /root is not)."""
    from sandbox.interpreter import find_interpreter

    return find_interpreter(settings.sandbox_python, uid=uid, gid=gid)


def build_spec(
    settings: Settings, dirs: RunDirs, bundle_dir: Path, entrypoint_env: dict[str, str], limits: Limits,
    uid: int | None, gid: int | None,
) -> SandboxSpec:
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/work",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "STOCKADE_SOCKET": f"/run/stockade/{SOCKET_NAME}",
        **entrypoint_env,
    }
    python, home = sandbox_python(settings, uid, gid)
    return SandboxSpec(
        argv=(python, "-I", "-S", "/runtime/boot.py"),
        work_dir=dirs.work,
        bundle_dir=bundle_dir,
        runtime_dir=RUNTIME_DIR,
        socket_dir=dirs.sock_dir,
        env=env,
        limits=limits,
        uid=uid,
        gid=gid,
        python_home=home,
    )
