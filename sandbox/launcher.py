"""Start a sandbox from a spec and watch it: exit, wall clock, work-dir bytes, output volume.

The launcher forks bwrap as the run's host uid with an empty environment, only
the fds the plan owns, and every rlimit already in place; it reaps bwrap itself
through a pidfd (no child-watcher thread) and can kill the whole pid namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from sandbox import _cgroup, _diskwatch, _environment, _limits
from sandbox._exit import ExitInfo, classify
from sandbox._output import Tail
from sandbox._plan import Plan
from sandbox.errors import SandboxError
from sandbox.pipeline import build_plan
from sandbox.spec import SandboxSpec

__all__ = ["ExitInfo", "SandboxProcess", "launch"]

TAIL_BYTES = 64 * 1024
DISK_CHECK_S = 0.5
MAX_WORK_ENTRIES = 100_000  # inodes under /work; past this the run ends with limit.disk
BWRAP_GRACE_S = 1.0  # after pid 1 is killed, how long bwrap has to reap it and exit before it is killed too


class SandboxProcess:
    """A running sandbox. ``pid`` is bwrap's pid on the host (the root of the sandbox's process tree)."""

    def __init__(self, popen: subprocess.Popen[bytes], plan: Plan, spec: SandboxSpec, cgroups: _cgroup.Placement | None,
                 info_fd: int, stdin: bytes | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._popen = popen
        self.pid: int = popen.pid
        self.uid: int = plan.identity.uid
        self.gid: int = plan.identity.gid
        self.started_at: float = time.monotonic()
        self.spec = spec
        self._cgroups = cgroups
        self._pidfd = os.pidfd_open(popen.pid)
        self._init_pid: int | None = None  # pid 1 of the sandbox, as the host sees it (from --info-fd)
        self._init_pidfd: int | None = None  # held so a signal can never reach a process that reused the pid
        self._info = bytearray()
        self._info_fd: int | None = info_fd
        self._imposed: str | None = None
        self._bwrap_kill: asyncio.TimerHandle | None = None
        self._ns_gone = False
        self._status: int | None = None
        self._done = self._loop.create_future()
        self._out = Tail(TAIL_BYTES)
        self._err = Tail(TAIL_BYTES)
        self._open_pipes = 0
        self._stdin = memoryview(stdin or b"")
        self._timer = self._loop.call_later(spec.limits.wall_s, self._impose, "limit.wall")
        self._disk_task = self._loop.create_task(self._watch_disk())
        self._loop.add_reader(self._pidfd, self._on_exit)
        os.set_blocking(info_fd, False)
        self._loop.add_reader(info_fd, self._on_info)
        for pipe, tail in ((popen.stdout, self._out), (popen.stderr, self._err)):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            self._open_pipes += 1
            self._loop.add_reader(pipe.fileno(), self._on_output, pipe, tail)
        if popen.stdin is not None:
            os.set_blocking(popen.stdin.fileno(), False)
            self._loop.add_writer(popen.stdin.fileno(), self._on_stdin)

    # ------------------------------------------------------------------ public
    @property
    def init_pid(self) -> int | None:
        return self._init_pid

    @property
    def exited(self) -> bool:
        """True once the sandbox has ended (``wait()`` returns at once)."""
        return self._done.done()

    async def wait(self) -> ExitInfo:
        return await asyncio.shield(self._done)

    def kill(self) -> None:
        """SIGKILL the sandbox's pid 1 (the kernel then kills every process in the pid namespace) and let bwrap
        reap it; bwrap too if it has not told us its child yet, or is not gone ``BWRAP_GRACE_S`` later."""
        if self._status is not None:
            return
        self._read_info()
        if self._init_pidfd is not None:
            # pid 1 alone: bwrap reaps it and exits with its status. Killing both at once left pid 1 an
            # orphan zombie of the host's init, still counted against the pool uid's RLIMIT_NPROC (the next
            # run given the uid) until that init reaps it - never, under an init that does not reap
            _pidfd_kill(self._init_pidfd)
            if self._bwrap_kill is None:  # bwrap not gone soon after all: SIGKILL it too
                self._bwrap_kill = self._loop.call_later(BWRAP_GRACE_S, self._kill_bwrap)
            return
        _pidfd_kill(self._pidfd)
        for child in _children(self.pid):  # bwrap has not told us its child yet
            fd = _child_pidfd(child, self.pid)
            if fd is not None:
                _pidfd_kill(fd)
                os.close(fd)

    def _kill_bwrap(self) -> None:
        if self._status is None:
            _pidfd_kill(self._pidfd)

    # ------------------------------------------------------------------ watchers
    def _impose(self, reason: str) -> None:
        if self._status is None and self._imposed is None:
            self._imposed = reason
        self.kill()

    def _on_info(self) -> None:
        self._read_info()

    def _read_info(self) -> None:
        fd = self._info_fd
        if fd is None:
            return
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                break
            self._info += chunk
            if b"}" in chunk:
                break
        with contextlib.suppress(ValueError, KeyError, TypeError):
            pid = int(json.loads(bytes(self._info).split(b"}")[0] + b"}")["child-pid"])
            self._init_pid = pid
            self._init_pidfd = _child_pidfd(pid, self.pid)
        self._loop.remove_reader(fd)
        os.close(fd)
        self._info_fd = None

    def _on_output(self, pipe: object, tail: Tail) -> None:
        fd = pipe.fileno()  # type: ignore[attr-defined]
        if not tail.feed(fd):
            self._loop.remove_reader(fd)
            pipe.close()  # type: ignore[attr-defined]
            self._open_pipes -= 1
            self._maybe_finish()
            return
        if self._out.total + self._err.total > self.spec.limits.max_output_bytes:
            self._impose("limit.output")

    def _on_stdin(self) -> None:
        pipe = self._popen.stdin
        assert pipe is not None
        try:
            while self._stdin:
                self._stdin = self._stdin[os.write(pipe.fileno(), self._stdin[:65536]):]
        except BlockingIOError:
            return
        except OSError:
            pass
        self._loop.remove_writer(pipe.fileno())
        pipe.close()

    async def _watch_disk(self) -> None:
        limit = self.spec.limits.workdir_mb * 1024 * 1024
        root = str(self.spec.work_dir)
        dev = os.stat(root).st_dev
        max_file = self.spec.limits.max_file_mb * 1024 * 1024
        pause = DISK_CHECK_S
        while self._status is None:
            await asyncio.sleep(pause)
            started = time.monotonic()
            used = await self._loop.run_in_executor(None, _disk_used, root, dev, self._init_pid, max_file)
            # a run can make its scan expensive (100,000 entries, 64 processes with 65,530 mappings each):
            # the supervisor spends at most a third of a CPU on it
            pause = max(DISK_CHECK_S, 2 * (time.monotonic() - started))
            if used.bytes > limit or used.entries > MAX_WORK_ENTRIES or used.blind:
                self._impose("limit.disk")
                return

    def _on_exit(self) -> None:
        try:
            pid, status, _ru = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        self._loop.remove_reader(self._pidfd)
        self._status = status
        self._popen.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not try again
        self._timer.cancel()
        if self._bwrap_kill is not None:
            self._bwrap_kill.cancel()
        self._disk_task.cancel()
        self._read_info()
        if self._init_pidfd is not None:
            # pid 1 dies with bwrap (PDEATHSIG) or was reaped by it; make sure, so nothing outlives wait()
            _pidfd_kill(self._init_pidfd)
        self._loop.create_task(self._finish_after_ns())

    async def _finish_after_ns(self) -> None:
        if self._init_pidfd is not None:
            # pid 1 of a namespace exits only after every process in it is gone
            await _pidfd_gone(self._loop, self._init_pidfd)
            os.close(self._init_pidfd)
            self._init_pidfd = None
        self._ns_gone = True
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._done.done() or self._status is None or not self._ns_gone:
            return
        if self._open_pipes:
            # the namespace is gone: take what is still buffered in the pipes, then stop listening
            for pipe, tail in ((self._popen.stdout, self._out), (self._popen.stderr, self._err)):
                if pipe is not None and not pipe.closed:
                    fd = pipe.fileno()
                    tail.drain(fd)
                    self._loop.remove_reader(fd)
                    pipe.close()
            self._open_pipes = 0
        if self._popen.stdin is not None and not self._popen.stdin.closed:
            self._loop.remove_writer(self._popen.stdin.fileno())
            with contextlib.suppress(OSError):
                self._popen.stdin.close()
        os.close(self._pidfd)
        memory_oom = self._cgroups.oom_killed() if self._cgroups else False
        if self._cgroups:
            self._cgroups.remove()
        elapsed = time.monotonic() - self.started_at
        assert self._status is not None
        code, sig, reason = classify(wait_status=self._status, imposed=self._imposed, cpu_s=self.spec.limits.cpu_s,
                                     elapsed_s=elapsed, memory_oom=memory_oom, stderr_tail=self._err.value())
        self._done.set_result(ExitInfo(returncode=code, signal=sig, reason=reason, stdout_tail=self._out.value(),
                                       stderr_tail=self._err.value(), elapsed_s=elapsed,
                                       output_bytes=self._out.total + self._err.total,
                                       reason_claimed=reason is not None and not self._imposed and not memory_oom))


def _disk_used(root: str, dev: int, init_pid: int | None, max_file: int) -> _diskwatch.Usage:
    """The work dir's tree plus the files without a name the sandbox still holds (unlinked, O_TMPFILE)."""
    tree = _diskwatch.usage(root, MAX_WORK_ENTRIES)
    if tree.blind or init_pid is None:
        return tree
    held, blind = _diskwatch.held_deleted(_diskwatch.namespace_pids(init_pid), dev, max_file)
    return _diskwatch.Usage(tree.bytes + held, tree.entries, blind=blind)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _child_pidfd(pid: int, parent: int) -> int | None:
    """A pidfd for ``pid`` only if it is (still) ``parent``'s child; ``parent`` is unreaped, so no pid reuse."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == parent:
                return fd
    except (OSError, ValueError, IndexError):
        pass
    os.close(fd)
    return None


def _pidfd_kill(fd: int) -> None:
    with contextlib.suppress(OSError):
        signal.pidfd_send_signal(fd, signal.SIGKILL)


async def _pidfd_gone(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    gone = loop.create_future()
    loop.add_reader(fd, lambda: gone.done() or gone.set_result(None))
    try:
        await asyncio.wait_for(gone, 5.0)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)


def spawn(plan: Plan, *, stdin: int | None, stdout: int, stderr: int) -> subprocess.Popen[bytes]:
    """Fork bwrap with the plan: run's uid, empty environment, only the plan's fds, limits already set."""
    ident = plan.identity
    argv = plan.argv()
    kwargs: dict[str, object] = {}
    if ident.switch:
        kwargs.update(user=ident.uid, group=ident.gid, extra_groups=[])
    return subprocess.Popen(
        argv, executable=plan.bwrap, env=dict(_environment.BWRAP_ENV), stdin=stdin, stdout=stdout, stderr=stderr,
        close_fds=True, pass_fds=tuple(plan.fds), cwd="/", start_new_session=True,
        preexec_fn=_limits.preexec(plan), **kwargs,  # type: ignore[arg-type]
    )


async def launch(spec: SandboxSpec, *, stdin: bytes | None = None, bwrap: str = "bwrap") -> SandboxProcess:
    """Start the sandbox. Fails closed: anything that would weaken isolation raises SandboxError."""
    asyncio.get_running_loop()
    plan = build_plan(spec, bwrap)
    cgroups: _cgroup.Placement | None = None
    info_r = -1
    try:
        cgroups = _cgroup.place(spec, plan)
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        plan.add("--info-fd", str(plan.own_fd(info_w)))
        try:
            popen = spawn(plan, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError("sandbox.unavailable", f"bubblewrap could not be started: {exc}") from exc
    except BaseException:
        if info_r >= 0:
            os.close(info_r)
        if cgroups:
            cgroups.remove()
        plan.close()
        raise
    plan.close()  # bwrap has its copies
    return SandboxProcess(popen, plan, spec, cgroups, info_r, stdin)
