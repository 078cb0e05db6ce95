"""Which names are left out of a bundle (documented in ``digest.py``)."""

from __future__ import annotations

__all__ = ["is_ignored"]


def is_ignored(name: str, *, is_dir: bool) -> bool:
    """Whether one path component is left out of a bundle (neither hashed nor stored)."""
    if name.startswith("."):
        return True
    if is_dir:
        return name == "__pycache__"
    return name.endswith((".pyc", ".pyo"))
