"""Reaping sandboxes orphaned by a supervisor that died while one was being set up.

bwrap's child (pid 1 of the new pid namespace) arms ``--die-with-parent`` only partway through its
setup. If the outer bwrap is killed before that - its supervisor was SIGKILLed, and
``--die-with-parent`` took the outer bwrap with it - the child is left blocked forever, waiting
for a parent that is gone: a process of the run's pool uid that nothing will ever end (it counts
against that uid's RLIMIT_NPROC for every later run given the uid). Seen in the suite each time a
worker process is SIGKILLed while its warm pool refills.

Such a process is recognisable without any state: it is ``bwrap``, it is pid 1 of its own pid
namespace, and its parent is not a ``bwrap`` (a live sandbox's namespace child always has its
outer bwrap as parent - also when the supervisor itself is pid 1 of a container). Only processes
of the given uids are touched.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Container
from pathlib import Path

__all__ = ["find_orphans", "reap_orphans"]

_PROC = Path("/proc")


def _status(pid: str) -> dict[str, str]:
    out = {}
    for line in (_PROC / pid / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _comm(pid: str) -> str:
    return (_PROC / pid / "comm").read_text().strip()


def find_orphans(uids: Container[int]) -> list[int]:
    found = []
    for entry in os.listdir(_PROC):
        if not entry.isdigit():
            continue
        try:
            st = _status(entry)
            if st.get("Name") != "bwrap" or int(st["Uid"].split()[0]) not in uids:
                continue
            nspid = st.get("NSpid", "").split()
            if len(nspid) < 2 or nspid[-1] != "1":
                continue  # the outer bwrap (host pid namespace), not a namespace's pid 1
            if _comm(st["PPid"]) == "bwrap":
                continue  # its outer bwrap is alive: a live sandbox
            found.append(int(entry))
        except (OSError, KeyError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return found


def reap_orphans(uids: Container[int]) -> int:
    """SIGKILL every orphaned sandbox child of these uids; the number killed."""
    killed = 0
    for pid in find_orphans(uids):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed
