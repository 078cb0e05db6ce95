"""Is the sandbox backend ready? One sentence per problem, [] when it is.

Fail closed: the supervisor runs no bundle while this list is non-empty, and
there is no setting that runs bundle code without the sandbox. Besides static
checks (bwrap present and recent enough, user namespaces on, seccomp program
builds), a probe sandbox is started for real and must report seccomp mode 2,
NO_NEW_PRIVS, no capabilities and no AF_INET, and connect back to a socket
whose SO_PEERCRED names a visible pid and the expected uid.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.interpreter import find_interpreter
from sandbox.spec import Limits, SandboxSpec

__all__ = ["PROBE_UID", "check_backend"]

PROBE_UID = 0x7FFF_FFF0  # when root: a uid nothing else uses
_PROBE = r"""
import errno, socket
s = socket.socket(socket.AF_UNIX)
s.connect("/run/stockade/s")
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    net = "open"
except OSError as e:
    net = "blocked" if e.errno == errno.EAFNOSUPPORT else "error"
st = {k: v.strip() for k, v in (l.split(":", 1) for l in open("/proc/self/status") if ":" in l)}
s.sendall(("%s %s %s %s" % (st["Seccomp"], st["NoNewPrivs"], st["CapEff"], net)).encode())
"""


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _userns_problems() -> list[str]:
    out = []
    if _read("/proc/sys/user/max_user_namespaces") == "0":
        out.append("user namespaces are disabled (user.max_user_namespaces = 0); set it above 0")
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        out.append("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0); set it to 1")
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        out.append("AppArmor restricts unprivileged user namespaces "
                   "(kernel.apparmor_restrict_unprivileged_userns = 1); allow bwrap or set it to 0")
    return out


def check_backend(bwrap: str = "bwrap", *, probe_uid: int | None = None, python: str | None = None) -> list[str]:
    from sandbox import _bwrap
    from sandbox.seccomp import program

    problems: list[str] = []
    try:
        _bwrap.resolve(bwrap)
    except SandboxError as exc:
        problems.append(exc.detail)
    problems += _userns_problems()
    try:
        program()
    except SandboxError as exc:
        problems.append(exc.detail)
    if problems:
        return problems
    try:
        return _probe(bwrap, probe_uid, python)
    except SandboxError as exc:
        return [exc.detail]


def _probe(bwrap: str, probe_uid: int | None, python: str | None) -> list[str]:
    from sandbox._cgroup import place
    from sandbox.launcher import spawn
    from sandbox.pipeline import build_plan

    root = os.geteuid() == 0
    uid = (probe_uid or PROBE_UID) if root else None
    exe, home = find_interpreter(python, uid=uid, gid=uid)
    tmp = Path(tempfile.mkdtemp(prefix="stockade-probe-"))
    try:
        os.chmod(tmp, 0o755)
        work, sock_dir = tmp / "work", tmp / "sock"
        work.mkdir()
        sock_dir.mkdir()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.settimeout(10)
        srv.bind(str(sock_dir / "s"))
        srv.listen(1)
        if uid is not None:
            for p in (work, sock_dir, sock_dir / "s"):
                os.chown(p, uid, uid)
        spec = SandboxSpec(argv=(exe, "-I", "-S", "-c", _PROBE), work_dir=work, bundle_dir=None, runtime_dir=None,
                           socket_dir=sock_dir, env={}, limits=Limits(wall_s=10), uid=uid, gid=uid, python_home=home)
        plan = build_plan(spec, bwrap)
        cg = place(spec, plan)
        try:
            proc = spawn(plan, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            plan.close()
        try:
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                proc.kill()
                err = proc.communicate(timeout=10)[1].decode(errors="replace").strip()
                return [f"the probe sandbox did not start ({(err.splitlines() or ['no error output'])[-1]})"]
            with conn:
                pid, peer_uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                conn.settimeout(10)
                report = conn.recv(200).decode(errors="replace").split()
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if cg:
                cg.remove()
            srv.close()
        return _judge(report, pid, peer_uid, uid if uid is not None else os.getuid())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _judge(report: list[str], pid: int, peer_uid: int, want_uid: int) -> list[str]:
    out = []
    if pid <= 0:
        out.append("socket peer credentials show pid 0: this supervisor cannot see its sandboxes' pids "
                   "(it runs in a pid namespace of its own); run it in the host pid namespace")
    if peer_uid == 65534 or peer_uid != want_uid:
        out.append(f"socket peer credentials show uid {peer_uid} instead of {want_uid}: "
                   "uids are not mapped between supervisor and sandbox, so peers cannot be identified")
    if len(report) != 4:
        return out + ["the probe sandbox did not report its status"]
    seccomp, nnp, capeff, net = report
    if seccomp != "2":
        out.append("the seccomp filter is not active inside the sandbox (kernel without seccomp filter support?)")
    if nnp != "1":
        out.append("NO_NEW_PRIVS is not set inside the sandbox")
    if int(capeff, 16) != 0:
        out.append("the sandbox keeps capabilities")
    if net != "blocked":
        out.append("AF_INET sockets are not blocked inside the sandbox")
    return out
