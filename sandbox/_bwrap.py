"""Finding bubblewrap and the options this build supports (probed once per path)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from sandbox.errors import SandboxError

__all__ = ["resolve", "supports"]

# A fixed search path: the host's PATH is not an input to the sandbox.
_SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_REQUIRED = ("--args", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop",
             "--seccomp", "--clearenv", "--size", "--perms", "--ro-bind-data", "--remount-ro", "--info-fd")


@functools.lru_cache(maxsize=8)
def _help(path: str) -> str:
    try:
        out = subprocess.run([path, "--help"], env={}, capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError("sandbox.unavailable", f"bubblewrap at {path} cannot be run: {exc}") from None
    return (out.stdout + out.stderr).decode(errors="replace")


def resolve(bwrap: str) -> str:
    """Absolute path of a usable bwrap, or SandboxError naming what is missing."""
    path = bwrap if "/" in bwrap else shutil.which(bwrap, path=_SEARCH_PATH)
    if not path or not os.access(path, os.X_OK):
        raise SandboxError("sandbox.unavailable",
                           f"bubblewrap ({bwrap}) is not installed; install the bubblewrap package")
    path = os.path.realpath(path)
    text = _help(path)
    missing = [opt for opt in _REQUIRED if opt not in text]
    if missing:
        raise SandboxError("sandbox.unavailable",
                           f"bubblewrap at {path} is too old (no {', '.join(missing)}); version 0.8 or newer is needed")
    return path


def supports(path: str, option: str) -> bool:
    return option in _help(path)
