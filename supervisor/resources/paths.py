"""Storage keys -> real files inside one root, and the canonical string the policy matches.

A key is a relative POSIX path chosen by bundle code (untrusted). The rules:

- refused as an escape (``storage.escape``): absolute paths, any ``..``
  component (even one that would stay inside), backslashes (a Windows
  separator some layer might honour), and anything whose *real* path after
  following symlinks (``Path.resolve``) is not inside the root;
- refused as malformed (``input.invalid``): empty keys, NUL and other control
  characters, lone surrogates (they would reach the file system as raw bytes:
  ``caf\\udcc3\\udca9`` is the file ``café`` under another name), keys over 1024
  characters, a component over 255 bytes, or a resolved path over the
  file system's ``PATH_MAX``;
- normalised: ``.`` components and repeated slashes are dropped
  (``a/./b``, ``a//b`` -> ``a/b``) and text is NFC, so every spelling of a file
  has one canonical form. ``%2e%2e`` is not decoded: it is a literal name.

The policy matches ``storage_resource(...)``, built from the resolved path,
never from the raw key, and NFC like the key (a symlink target spelled NFD on
disk still matches a rule written for the name).
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path, PurePosixPath

from supervisor.errors import StockadeError
from supervisor.fspath import resolve

__all__ = [
    "MAX_COMPONENT_BYTES", "MAX_KEY_CHARS", "check_segment", "resolve_storage_path", "split_storage_key",
    "storage_resource",
]

MAX_KEY_CHARS = 1024
MAX_COMPONENT_BYTES = 255
# C0 and C1 controls (U+0085 NEL is a newline to many readers) and the line / paragraph separators: a name
# that breaks the log line, listing or terminal it is shown in
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")
PATH_MAX = 4096  # Linux: longer paths fail with ENAMETOOLONG in the middle of an operation
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


def split_storage_key(raw: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """Validate a key and return its canonical components (``()`` is the root, only with ``allow_root``)."""
    if not isinstance(raw, str):
        raise StockadeError("input.invalid", "storage path must be a string")
    if len(raw) > MAX_KEY_CHARS:
        raise StockadeError("input.invalid", f"storage path longer than {MAX_KEY_CHARS} characters")
    if _CONTROL.search(raw):
        raise StockadeError("input.invalid", "storage path contains a NUL or control character")
    if _SURROGATE.search(raw):
        raise StockadeError("input.invalid", "storage path is not valid Unicode text (lone surrogate)")
    if "\\" in raw:
        raise StockadeError("storage.escape", "storage path contains a backslash")
    if raw.startswith("/"):
        raise StockadeError("storage.escape", "storage path must be relative to the storage root")
    key = unicodedata.normalize("NFC", raw)
    parts = tuple(p for p in key.split("/") if p not in ("", "."))
    if ".." in parts:
        raise StockadeError("storage.escape", "storage path contains a '..' component")
    for p in parts:
        if len(p.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise StockadeError("input.invalid", f"a storage path component is longer than {MAX_COMPONENT_BYTES} bytes")
    if not parts and not allow_root:
        raise StockadeError("input.invalid", "storage path is empty")
    return parts


def resolve_storage_path(root: Path, raw: str, *, allow_root: bool = False) -> Path:
    """The real path ``raw`` names under ``root`` (symlinks followed), or ``storage.escape``.

    ``root`` need not exist yet. The result may not exist (a file about to be written).
    """
    parts = split_storage_key(raw, allow_root=allow_root)
    try:
        real_root = resolve(Path(root))
        target = resolve(real_root.joinpath(*parts))
        size = len(os.fsencode(target))
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loop, unreadable component
        raise StockadeError("storage.escape", f"storage path cannot be resolved safely ({exc.__class__.__name__})") from None
    if target == real_root:
        if allow_root:
            return target
        raise StockadeError("storage.escape", "storage path resolves to the storage root itself")
    if not target.is_relative_to(real_root):
        raise StockadeError("storage.escape", "storage path resolves outside the storage root")
    if size >= PATH_MAX:
        raise StockadeError("input.invalid", "storage path is too long once placed under the storage root")
    return target


def check_segment(value: str, what: str) -> str:
    """A tenant or user id used as one directory name: plain characters, never ``.``/``..``."""
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value) or value in (".", ".."):
        raise StockadeError("input.invalid", f"{what} cannot be used as a storage directory name")
    return value


def storage_resource(tenant: str, user: str | None, rel: str | PurePosixPath) -> str:
    """``storage://u/<user>/<rel>`` (user scope) or ``storage://shared/<rel>`` — what policy globs match.

    ``rel`` is the resolved path relative to the scope root (``""`` for the root
    itself, as in ``storage.list``). The tenant is implied: every policy belongs
    to one tenant, so it is validated but not part of the text.
    """
    check_segment(tenant, "tenant id")
    scope = f"u/{check_segment(user, 'user id')}" if user is not None else "shared"
    rel_text = unicodedata.normalize("NFC", str(PurePosixPath(rel))) if str(rel) not in ("", ".") else ""
    return f"storage://{scope}/{rel_text}"
