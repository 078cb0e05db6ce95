"""From how a sandbox ended to a reason code (``limit.cpu``, ``limit.memory`` ...)."""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass

__all__ = ["ExitInfo", "classify"]

_MEMORY_MARKS = (b"MemoryError", b"[Errno 12] Cannot allocate memory", b"Cannot allocate memory")
_DISK_MARKS = (b"[Errno 27] File too large", b"[Errno 28] No space left on device")


@dataclass(frozen=True)
class ExitInfo:
    returncode: int  # the sandboxed command's exit status (bwrap passes it through); -N if bwrap died of signal N
    signal: int | None  # the signal that ended the command, if any
    reason: str | None  # limit.memory | limit.cpu | limit.wall | limit.disk | limit.output | None
    stdout_tail: bytes
    stderr_tail: bytes
    elapsed_s: float = 0.0
    output_bytes: int = 0  # stdout + stderr bytes seen (the tails keep only the end)
    # the reason rests only on what the sandboxed program controls - its exit status (exit(152) reads as
    # SIGXCPU) or its stderr ("MemoryError") - not on a limit the launcher imposed or a cgroup OOM kill
    reason_claimed: bool = False


def classify(*, wait_status: int, imposed: str | None, cpu_s: float, elapsed_s: float, memory_oom: bool,
             stderr_tail: bytes) -> tuple[int, int | None, str | None]:
    """(returncode, signal, reason). ``imposed`` is the limit the launcher enforced itself (wall, disk, output)."""
    import os

    if os.WIFSIGNALED(wait_status):  # bwrap itself was killed: only we do that
        sig = os.WTERMSIG(wait_status)
        return -sig, sig, imposed
    code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else 255
    # bwrap reports "killed by signal N" as 128+N, like a shell
    sig = code - 128 if 128 < code <= 128 + 64 else None
    if imposed:
        return code, sig, imposed
    if memory_oom:
        return code, sig, "limit.memory"
    if sig == _signal.SIGXCPU:
        return code, sig, "limit.cpu"
    if sig == _signal.SIGXFSZ:
        return code, sig, "limit.disk"
    if sig == _signal.SIGKILL and elapsed_s >= cpu_s:
        return code, sig, "limit.cpu"  # ignored SIGXCPU, then the hard limit's SIGKILL
    if code != 0:
        if any(m in stderr_tail for m in _MEMORY_MARKS):
            return code, sig, "limit.memory"
        if any(m in stderr_tail for m in _DISK_MARKS):
            return code, sig, "limit.disk"
    return code, sig, None
