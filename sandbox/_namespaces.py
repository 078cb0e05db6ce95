"""Namespaces and privileges: every namespace bwrap can make, no capabilities, no way back in."""

from __future__ import annotations

from sandbox import _bwrap
from sandbox._plan import Plan
from sandbox.spec import SandboxSpec

__all__ = ["apply"]


def apply(spec: SandboxSpec, plan: Plan) -> None:
    # user, pid, net, ipc, uts, mount, cgroup. A new network namespace has only a downed
    # loopback: no route anywhere, and abstract Unix sockets of the host are not visible.
    plan.add("--unshare-all", "--unshare-user")
    if _bwrap.supports(plan.bwrap, "--disable-userns"):
        # max_user_namespaces=0 inside; seccomp refuses unshare/clone(CLONE_NEW*) as well
        plan.add("--disable-userns")
    plan.add(
        "--uid", str(plan.identity.uid),  # the same number inside and out: files in /work read the same
        "--gid", str(plan.identity.gid),
        "--hostname", spec.hostname,
        "--die-with-parent",  # the supervisor going away takes the sandbox with it
        "--new-session",  # setsid: no controlling terminal to inject keystrokes into (TIOCSTI)
        "--cap-drop", "ALL",
        # The command itself is pid 1: no unsandboxed bwrap reaper inside, and bwrap's host process reaps
        # it directly. (With bwrap's own pid 1, that reaper outlives the host process as an orphan zombie
        # for the host's init to collect, still counted against the run uid's RLIMIT_NPROC.)
        "--as-pid-1",
    )
