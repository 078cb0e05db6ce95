"""Deterministic content hash of a bundle: ``sha256:<hex>``.

What counts: every file's relative POSIX path (UTF-8) and its bytes, in sorted
path order, each length-prefixed so that no two different bundles frame to the
same byte stream. What does not: file modes, times, owners, empty directories,
and the ignored names below — they are neither hashed nor copied into the
immutable store, so the stored copy is exactly what the digest covers.

Ignored (``is_ignored``): any path component starting with ``.`` (``.git``,
editor swap files, ``.DS_Store``), ``__pycache__`` directories and ``*.pyc`` /
``*.pyo`` files. Byte-code is rebuilt inside the sandbox; hidden files are
editor and VCS noise that would otherwise mint spurious versions on every save.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from supervisor.bundles._ignore import is_ignored
from supervisor.bundles._snapshot import snapshot_dir

__all__ = ["DIGEST_PREFIX", "digest_dir", "digest_files", "is_ignored", "is_digest"]

DIGEST_PREFIX = "sha256:"
_DOMAIN = b"stockade-bundle-v1\n"


def is_digest(value: str) -> bool:
    hexpart = value[len(DIGEST_PREFIX):]
    return (
        value.startswith(DIGEST_PREFIX) and len(hexpart) == 64
        and all(c in "0123456789abcdef" for c in hexpart)
    )


def digest_files(files: Iterable[tuple[str, bytes]]) -> str:
    """Hash (relative posix path, bytes) pairs; the order they come in does not matter."""
    h = hashlib.sha256(_DOMAIN)
    for path, data in sorted(files, key=lambda item: item[0].encode("utf-8")):
        p = path.encode("utf-8")
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return DIGEST_PREFIX + h.hexdigest()


def digest_dir(path: Path, *, max_files: int = 100_000, max_bytes: int = 1 << 30, max_path: int = 1024) -> str:
    """Digest of a bundle folder, with the same walk (and refusals) as registration."""
    return digest_files(snapshot_dir(path, max_files=max_files, max_bytes=max_bytes, max_path=max_path).items())
