"""What the CLI reads and writes: one line per error (``stockade: code: detail``, control characters escaped),
stdout that cannot lose a secret unseen, capped reads of the files an operator names, and the tenant a
command-line reference names."""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
from typing import Any

from supervisor.errors import StockadeError


class _WarningLines(logging.Handler):
    """What an operator command logs at WARNING or above (a database migrated by a newer Stockade, a misspelt
    setting): one line each on stderr, ``stockade: warning: ...`` like the command's own lines (without a
    handler, Python printed the bare message)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"stockade: {record.levelname.lower()}: {_printable(record.getMessage())}", file=sys.stderr)
        except Exception:
            self.handleError(record)


def _printable(text: str) -> str:
    """``text`` with every control or format character escaped (``\\x1b``, ``\\n``, ``\\u202e``): a name taken
    from a bundle folder, an anchor file or the command line cannot drive the terminal or start a second line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _fail(msg: str) -> int:
    print(f"stockade: {_printable(msg)}", file=sys.stderr)
    return 1


def _out(text: str, *, unseen: str = "") -> None:
    """``text`` on stdout, written now: a full disk or a closed pipe is one line naming what was done but not
    shown (``unseen``: a key made and never printed), not a lost secret or a traceback at exit. A reader that
    stopped reading a listing (``| head``) is no error."""
    try:
        if sys.stdout is None:  # started with stdout closed (>&-): print() would drop the text without a word
            raise OSError(errno.EBADF, "standard output is closed")
        print(text, flush=True)
    except OSError as exc:
        try:  # the unwritten rest: dropped, not retried (and reported again, as a traceback) at exit
            if sys.stdout is not None:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass  # stdout is no file (embedded, captured): nothing is flushed at exit either
        if isinstance(exc, BrokenPipeError) and not unseen:
            return
        raise StockadeError("internal", f"cannot write the output: {exc.strerror or exc}" + (f"; {unseen}" if unseen else "")) from None


async def _tenant_id(services: Any, ref: str) -> str:
    t = await services.tenants.get_tenant(ref) or await services.tenants.get_tenant_by_name(ref)
    if t is None:
        shown = ref if len(ref) <= 200 else ref[:200] + "…"  # a pasted blob is not echoed whole
        raise StockadeError("not_found", f"no tenant {shown!r}" + (f" ({len(ref)} characters)" if len(ref) > 200 else ""))
    return t.id



_MAX_RECEIPT_BYTES = 256 * 1024 * 1024  # also anchor files: receipts are anchors too
_MAX_KEY_BYTES = 64 * 1024


def _read_capped(path: str, cap: int, what: str) -> bytes:
    """At most ``cap`` bytes of ``path`` (``-``: stdin), a regular file: never wait on a FIFO without a writer
    (or a terminal device), never read /dev/zero or a stray huge file whole."""
    try:
        if path == "-":
            if sys.stdin is None:  # started with stdin closed (<&-)
                raise OSError(errno.EBADF, "standard input is closed")
            data = sys.stdin.buffer.read(cap + 1)
        else:
            # O_NONBLOCK: opening a FIFO without a writer returns at once (then it is refused) instead of blocking
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise StockadeError("input.invalid", f"cannot read {path}: not a regular file")
                data = fh.read(cap + 1)
    except OSError as exc:
        raise StockadeError("input.invalid", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > cap:
        raise StockadeError("input.too_large", f"the {what} is larger than {cap} bytes")
    return data
