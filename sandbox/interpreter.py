"""Which Python runs inside the jail.

The interpreter and its installation are bound read-only at their host paths,
and bwrap runs as the run's uid, so the installation must be reachable by that
uid. A Python under /root (pyenv, conda as root) is not; then the system
interpreter of the same major.minor version (standard library only is needed
inside) is the next choice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sandbox._access import unreachable_part
from sandbox.errors import SandboxError

__all__ = ["find_interpreter"]


def _home_of(exe: str) -> Path:
    real = Path(os.path.realpath(exe))
    if real == Path(os.path.realpath(sys.executable)):
        return Path(os.path.realpath(sys.base_prefix))
    return real.parent.parent  # <prefix>/bin/pythonX.Y


def find_interpreter(preferred: str | None = None, *, uid: int | None = None,
                     gid: int | None = None) -> tuple[str, Path]:
    """(interpreter path, installation prefix to bind) usable by a sandbox running as ``uid``.

    ``preferred`` (e.g. STOCKADE_SANDBOX_PYTHON) is used as given or refused; without it the running
    interpreter is tried, then /usr/bin/python3.X and /usr/bin/python3.
    """
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [preferred] if preferred else [sys.executable, f"/usr/bin/python{ver}", "/usr/bin/python3"]
    tried = []
    for exe in candidates:
        if not exe or not os.path.exists(exe):
            tried.append(f"{exe} (missing)")
            continue
        real = os.path.realpath(exe)
        home = _home_of(exe)
        if uid is not None and gid is not None:
            blocked = unreachable_part(Path(real), uid, gid, need_read=True) or unreachable_part(home, uid, gid)
            if blocked is not None:
                tried.append(f"{real} (uid {uid} cannot reach {blocked})")
                continue
        return real, home
    raise SandboxError("sandbox.unavailable",
                       "no Python interpreter is usable inside the sandbox: " + "; ".join(tried) +
                       "; set STOCKADE_SANDBOX_PYTHON to a world-readable python3")
