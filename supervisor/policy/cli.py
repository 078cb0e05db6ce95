"""``stockade policy validate FILE``: exit 0 if valid, else every error with its line number."""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import TextIO

from supervisor.policy._yaml import MAX_POLICY_BYTES
from supervisor.policy.loader import PolicyError, load_policy

__all__ = ["validate_file", "validate_main"]


def validate_file(path: str | Path) -> list[str]:
    """The errors of the policy file at ``path`` (``line N: message``); ``[]`` if it is valid.

    Raises ``OSError`` if the file cannot be read, or is not a regular file (a FIFO, device or folder).
    """
    # O_NONBLOCK: a FIFO without a writer is refused at once, not waited on forever
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = fh.read(MAX_POLICY_BYTES + 1)  # never read an arbitrarily large file whole
    if len(data) > MAX_POLICY_BYTES:
        return [f"line 1: policy document is larger than {MAX_POLICY_BYTES} bytes"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return [f"line {line}: the file is not UTF-8 text"]
    try:
        load_policy(text, source=str(path))
    except PolicyError as exc:
        return exc.errors
    return []


def validate_main(path: str, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command: 0 valid, 1 invalid (errors on ``err``, one per line), 2 unreadable."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        errors = validate_file(path)
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=err)
        return 2
    if errors:
        for e in errors:
            print(f"{path}: {e}", file=err)
        return 1
    print(f"{path}: valid policy", file=out)
    return 0
