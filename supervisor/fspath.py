"""``Path.resolve`` that refuses a symlink loop on every Python.

Before Python 3.13 ``resolve()`` raises ``RuntimeError`` on a loop. From 3.13 on (it is ``os.path.realpath``
there) a non-strict resolve returns the looping part unresolved, as if it were an ordinary name: a storage
key through a planted loop then passed the escape check, and a data directory in a loop was reported as
"not a directory" instead of "cannot resolve". ``resolve`` keeps the old meaning everywhere: a path that
does not exist (yet) resolves as far as it exists; a loop raises (``RuntimeError`` before 3.13, ``OSError``
ELOOP from 3.13 on - catch both).
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

__all__ = ["resolve"]

_LOOPS_RAISE = sys.version_info < (3, 13)


def resolve(path: Path) -> Path:
    real = path.resolve(strict=False)
    if not _LOOPS_RAISE:
        try:
            path.resolve(strict=True)
        except OSError as exc:  # a missing part (ENOENT), a file in the middle (ENOTDIR): as before
            if exc.errno == errno.ELOOP:
                raise
    return real
