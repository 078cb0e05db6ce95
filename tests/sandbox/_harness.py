"""Running small Python snippets in real sandboxes for the escape and posture tests."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sandbox.identity import UidPool
from sandbox.interpreter import find_interpreter
from sandbox.launcher import ExitInfo, launch
from sandbox.spec import Limits, SandboxSpec

ROOT = os.geteuid() == 0
# a uid range of our own, away from the settings' default pool other test suites use
POOL = UidPool(300_000 + (os.getpid() % 400) * 200, 200) if ROOT else None

# Every snippet starts with this: report results as JSON lines, raw syscalls through libc.
PRELUDE = r'''
import ctypes, errno, json, os, socket, sys
def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()
def attempt(fn, *a):
    try:
        r = fn(*a)
    except OSError as e:
        out(ok=False, errno=e.errno, err=str(e)[:300]); return None
    out(ok=True, result=repr(r)[:300]); return r
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
    if r == -1:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
    return r
'''


@dataclass
class Box:
    """A host directory layout for one sandbox: work dir and optional socket dir."""

    root: Path
    work: Path
    sock: Path | None
    uid: int | None

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def make_box(uid: int | None, *, with_socket_dir: bool = False) -> Box:
    root = Path(tempfile.mkdtemp(prefix="stockade-sbx-"))
    os.chmod(root, 0o711)
    work = root / "work"
    work.mkdir(mode=0o700)
    sock = None
    if with_socket_dir:
        sock = root / "sock"
        sock.mkdir(mode=0o700)
    if uid is not None:
        for p in (work, sock):
            if p is not None:
                os.chown(p, uid, uid)
    return Box(root=root, work=work, sock=sock, uid=uid)


def interpreter(uid: int | None) -> tuple[str, Path]:
    probe = uid if uid is not None else (POOL.base if POOL else None)
    return find_interpreter(uid=probe, gid=probe)


@dataclass
class Result:
    info: ExitInfo
    lines: list[dict[str, Any]] = field(default_factory=list)
    uid: int | None = None
    work: Path | None = None

    @property
    def first(self) -> dict[str, Any]:
        assert self.lines, f"no output; rc={self.info.returncode} stderr={self.info.stderr_tail[-600:]!r}"
        return self.lines[0]


def parse(stdout: bytes) -> list[dict[str, Any]]:
    lines = []
    for raw in stdout.decode(errors="replace").splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                pass
    return lines


async def run_snippet(code: str, *, limits: Limits | None = None, uid: int | None = None, box: Box | None = None,
                      env: dict[str, str] | None = None, prelude: bool = True, stdin: bytes | None = None,
                      keep_box: bool = False, bundle_dir: Path | None = None,
                      runtime_dir: Path | None = None) -> Result:
    own_uid = uid is None and POOL is not None
    if own_uid:
        assert POOL is not None
        uid = POOL.acquire()
    own_box = box is None
    if box is None:
        box = make_box(uid)
    try:
        exe, home = interpreter(uid)
        spec = SandboxSpec(
            argv=(exe, "-I", "-S", "-c", (PRELUDE if prelude else "") + code),
            work_dir=box.work, bundle_dir=bundle_dir, runtime_dir=runtime_dir, socket_dir=box.sock,
            env=env if env is not None else {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/work"},
            limits=limits or Limits(wall_s=20), uid=uid, gid=uid, python_home=home,
        )
        proc = await launch(spec, stdin=stdin)
        info = await proc.wait()
        return Result(info=info, lines=parse(info.stdout_tail), uid=uid, work=box.work)
    finally:
        if own_box and not keep_box:
            box.remove()
        if own_uid and POOL is not None and uid is not None:
            POOL.release(uid)


def limits(**kw: Any) -> Limits:
    return replace(Limits(wall_s=20), **kw)
