"""``code.run``: Python source in, stdout/stderr/exit status/produced files out.

The code runs in its own sandbox, never the calling bundle's: a fresh work dir,
no socket (no door at all), no network, tighter limits than a bundle, and its
own pool uid. Produced files (new or changed in the work dir) come back as
text (or base64 for binary), capped in count and size; those no frame can carry
(a name that is not UTF-8) are listed apart, and ``files_truncated`` says when
some were left out. Result members: supervisor/README.md, "code.run".
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from supervisor.errors import StockadeError
from supervisor.rmtree import remove_tree
from supervisor.storable import is_utf8_name
from supervisor.tools.base import ToolArgs, ToolContext, ToolResult
from supervisor.tools.code._admission import admission_for, busy

__all__ = ["CodeRunTool"]

log = logging.getLogger("stockade.tools")

MAX_OUTPUT = 64 * 1024
MAX_FILES = 20
MAX_FILE_BYTES = 256 * 1024
MAX_DEPTH = 64  # directories below the work dir a produced file may be in to be returned
# the files' share of the reply frame (MAX_REPLY, 16 MiB): the rest holds stdout and stderr (64 KiB each,
# at most six bytes of JSON per byte) and the other members
MAX_FILES_JSON = 12 * 1024 * 1024
_SHORT_ESCAPES = b'"\\\n\r\t\b\f'  # two bytes each in JSON; every other control character six (\u0001)
_LONG_ESCAPES = bytes(c for c in range(32) if c not in _SHORT_ESCAPES)
_MAX_ENTRIES = 100_000  # what the launcher lets /work hold (sandbox.launcher.MAX_WORK_ENTRIES)


class CodeRunArgs(ToolArgs):
    code: str = Field(min_length=1, max_length=200_000)
    language: str = Field(default="python", pattern=r"^python$")
    stdin: str = Field(default="", max_length=1_000_000)
    files: dict[str, str] = Field(default_factory=dict, max_length=50)  # inputs written into the work dir
    timeout_s: float = Field(default=10.0, gt=0, le=60)


class CodeRunTool:
    name: ClassVar[str] = "code.run"
    args_model: ClassVar[type[ToolArgs]] = CodeRunArgs
    risk: ClassVar[str] = "medium"
    default_price_micro: ClassVar[int] = 0
    timeout_s: ClassVar[float] = 75.0
    side_effects: ClassVar[bool] = False

    def resource(self, args: ToolArgs, ctx: ToolContext) -> str | None:
        return None

    def estimate_micro(self, args: ToolArgs, ctx: ToolContext) -> int | None:
        return None

    async def run(self, args: ToolArgs, ctx: ToolContext) -> ToolResult:
        assert isinstance(args, CodeRunArgs)
        settings = ctx.services.settings
        pool = ctx.services.extras.get("uid_pool")
        with admission_for(ctx.services).slot(ctx.tenant_id, ctx.call):  # the tenant's cap, the runs' uids
            return await self._run(args, ctx, settings, pool)

    async def _run(self, args: CodeRunArgs, ctx: ToolContext, settings: Any, pool: Any) -> ToolResult:
        from sandbox.errors import SandboxError
        from sandbox.launcher import launch
        from sandbox.spec import Limits, SandboxSpec
        from supervisor.runs.sandboxing import sandbox_python

        uid = _acquire_uid(pool)
        work: Path | None = None
        proc = None
        try:  # from here on the uid goes back to the pool whatever happens (a full disk in mkdtemp too)
            base = settings.data_dir / "coderun"
            base.mkdir(parents=True, exist_ok=True, mode=0o711)  # noqa: ASYNC240 - one mkdir, no I/O wait worth a thread
            work = Path(tempfile.mkdtemp(prefix="code-", dir=base))
            before = await asyncio.to_thread(_prepare, work, args, uid)
            limits = Limits(
                memory_mb=min(256, settings.sandbox_memory_mb), max_procs=min(16, settings.sandbox_max_procs),
                max_open_files=64, max_file_mb=min(16, settings.sandbox_max_file_mb), cpu_s=int(min(args.timeout_s, 30)) + 1,
                wall_s=float(args.timeout_s), workdir_mb=min(64, settings.sandbox_workdir_mb), tmpfs_mb=16,
            )
            python, home = sandbox_python(settings, uid, uid)
            spec = SandboxSpec(
                argv=(python, "-I", "-S", "/work/main.py"),
                work_dir=work, bundle_dir=None, runtime_dir=None, socket_dir=None,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/work", "PYTHONDONTWRITEBYTECODE": "1"},
                limits=limits, uid=uid, gid=uid, hostname="code", python_home=home,
            )
            try:
                proc = await launch(spec, stdin=args.stdin.encode(), bwrap=settings.sandbox_bwrap)
            except SandboxError as exc:
                raise StockadeError(exc.code if exc.code in ("sandbox.unavailable", "input.invalid") else "tool.unavailable",
                                    exc.detail) from None
            info = await proc.wait()
            produced = await asyncio.to_thread(_produced, work, before)
        finally:
            # Shielded, in a task of its own: a second cancel (the run ending while the call's own deadline
            # already canceled it) interrupted ``await proc.wait()`` here, and the uid - kept while its
            # sandbox might live - was never given back, nor the work dir removed: one uid of the node's
            # pool gone per such call until a restart. Now the cleanup finishes whatever the caller does.
            cleanup = asyncio.ensure_future(_clean_up(proc, work, pool, uid))
            _CLEANUPS.add(cleanup)
            cleanup.add_done_callback(_CLEANUPS.discard)
            await asyncio.shield(cleanup)
        result: dict[str, Any] = {
            "exit_code": info.returncode,
            "signal": info.signal,
            "stdout": _text(info.stdout_tail),
            "stderr": _text(info.stderr_tail),
            # the tails are the last 64 KiB each: say when the program wrote more (it was cut silently)
            "output_bytes": info.output_bytes,
            "output_truncated": info.output_bytes > len(info.stdout_tail[-MAX_OUTPUT:]) + len(info.stderr_tail[-MAX_OUTPUT:]),
            **produced,
        }
        if info.reason:
            result["limit"] = info.reason
        return ToolResult(result=result)


_CLEANUPS: set[asyncio.Future[None]] = set()  # cleanups left running by a canceled caller (a task needs a reference)


async def _clean_up(proc: Any, work: Path | None, pool: Any, uid: int | None) -> None:
    """End the sandbox, remove its work dir, give its uid back: the uid only once the sandbox is gone."""
    try:
        if proc is not None and not proc.exited:
            # canceled (the run ended, the call timed out): the sandbox must be gone before its uid is reused
            proc.kill()
            await proc.wait()
        if work is not None:
            # any depth (shutil.rmtree raised RecursionError on a deep tree, and the uid was never
            # given back); up to the launcher's 100,000 entries: not on the event loop
            await asyncio.to_thread(remove_tree, work)
    finally:
        if uid is not None and pool is not None and (proc is None or proc.exited):
            pool.release(uid)  # (a sandbox that may still live keeps its uid: never two on one)


def _acquire_uid(pool: Any) -> int | None:
    """A uid of the node's pool for the sandbox (None: not root, no pool). An exhausted pool is a clear,
    retryable refusal, given before anything ran: no traceback, the idempotency key freed, nothing charged
    (it was a SandboxError out of the tool: ``tool.failed``, logged as a crash, the key kept)."""
    from sandbox.errors import SandboxError

    if pool is None:
        return None
    try:
        return pool.acquire()
    except SandboxError as exc:
        log.warning("code.run refused: %s", exc.detail)  # the operator's version, naming the setting to raise
        raise busy("code.run: no sandbox is free on this node right now; retry shortly") from None


def _prepare(work: Path, args: CodeRunArgs, uid: int | None) -> dict[str, tuple[int, float]]:
    """Write the inputs, hand the dir to the run's uid, snapshot it (file I/O: off the event loop)."""
    os.chmod(work, 0o700)
    _write_inputs(work, args)
    if uid is not None and os.geteuid() == 0:
        for p in [work, *work.rglob("*")]:
            os.chown(p, uid, uid)
    return _snapshot(work)


def _write_inputs(work: Path, args: CodeRunArgs) -> None:
    (work / "main.py").write_text(args.code, encoding="utf-8")
    seen: set[tuple[str, ...]] = set()
    for name, content in args.files.items():
        rel = Path(name)
        # judged on the normalised parts: "./main.py" and "a//main.py/.." spellings must not slip past
        # (a policy matching args.code would be checking code that never runs)
        if (rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.parts == ("main.py",) or "\x00" in name
                or rel.parts in seen):
            raise StockadeError("input.invalid", f"bad or repeated input file name {name!r}")
        seen.add(rel.parts)
        dest = work / rel
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(content, encoding="utf-8")
        except (OSError, UnicodeError) as exc:  # a file where a directory is needed, a too-long name, a lone surrogate
            raise StockadeError("input.invalid", f"input file {name!r} cannot be written ({exc.__class__.__name__})") from None


def _snapshot(work: Path) -> dict[str, tuple[int, float]]:
    return _walk(work)[0]


def _walk(work: Path) -> tuple[dict[str, tuple[int, float]], bool]:
    """The regular files under ``work`` by relative path, ``(size, mtime)`` each, never through a link
    (a symlinked file is left out, a symlinked directory not entered); and True if the walk left some out:
    deeper than ``MAX_DEPTH``, a path too long for the kernel to name, past ``_MAX_ENTRIES``.

    Iterative and by-path-bounded: ``Path.rglob`` recursed once per level (a tree ~1,000 deep was a
    RecursionError) and stat'ed full paths (one past PATH_MAX was ENAMETOOLONG), out of the tool either
    way: ``tool.failed``, a traceback, and the call's whole result lost to one directory tree."""
    out: dict[str, tuple[int, float]] = {}
    partial = False
    entries = 0
    stack: list[tuple[str, int]] = [("", 0)]
    while stack:
        rel_dir, depth = stack.pop()
        try:
            with os.scandir(work / rel_dir) as it:
                listed = list(it)
        except OSError:  # ENAMETOOLONG, or gone
            partial = True
            continue
        for entry in listed:
            entries += 1
            if entries > _MAX_ENTRIES:
                return out, True
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth >= MAX_DEPTH:
                        partial = True
                    else:
                        stack.append((rel, depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    out[rel] = (st.st_size, st.st_mtime)
            except OSError:
                partial = True
    return out, partial


def _produced(work: Path, before: dict[str, tuple[int, float]]) -> dict[str, Any]:
    """The files the run created or changed: ``files`` (at most ``MAX_FILES``), ``files_skipped`` (at most
    ``MAX_FILES`` that cannot be returned: a name that is not UTF-8, a file that cannot be opened) and
    ``files_truncated`` (True: some were in neither list, or too deep to be looked at)."""
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    budget = MAX_FILES_JSON
    now, truncated = _walk(work)
    for rel, sig in sorted(now.items()):
        if before.get(rel) == sig or rel == "main.py":
            continue
        if not is_utf8_name(rel):
            # os hands such a name over with lone surrogates: no frame can carry it, and the whole
            # result was lost (frame.invalid) for one file. Named escaped (b'\xff' -> "\\xff"), apart:
            # it is no path a later call could use
            if len(skipped) < MAX_FILES:
                skipped.append({"name": os.fsencode(rel).decode("utf-8", "backslashreplace"),
                                "reason": "name is not UTF-8"})
            else:
                truncated = True
            continue
        if len(files) >= MAX_FILES:
            truncated = True
            continue
        try:  # only what is returned is read (a run may leave 20 files of max_file_mb each); never a link
            fd = os.open(work / rel, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            if len(skipped) < MAX_FILES:
                skipped.append({"name": rel, "reason": "cannot be opened"})
            else:
                truncated = True
            continue
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_FILE_BYTES)
        entry: dict[str, Any] = {"path": rel, "size": size, "truncated": size > MAX_FILE_BYTES}
        try:
            entry["text"] = data.decode("utf-8")
        except UnicodeDecodeError:
            entry["base64"] = base64.b64encode(data).decode()
        # what the entry costs in the reply frame: text of control characters is six times its size in
        # JSON (20 files of 256 KiB of "\x01" were 30 MiB, past MAX_REPLY: the bundle got frame.too_large
        # instead of its stdout and every file, for a call that ran and was charged)
        cost = 6 * len(rel.encode()) + 100 + (_json_len(data) if "text" in entry else len(entry["base64"]))
        if cost > budget:
            if len(skipped) < MAX_FILES:
                skipped.append({"name": rel, "reason": "too large for the reply"})
            truncated = True
            continue
        budget -= cost
        files.append(entry)
    return {"files": files, "files_skipped": skipped, "files_truncated": truncated}



def _json_len(data: bytes) -> int:
    """Bytes of the JSON string of UTF-8 ``data`` (ensure_ascii off), without building it: C counts only."""
    return 2 + len(data) + sum(data.count(c) for c in _SHORT_ESCAPES) + 5 * sum(data.count(c) for c in _LONG_ESCAPES)


def _text(data: bytes | None) -> str:
    return (data or b"")[-MAX_OUTPUT:].decode("utf-8", errors="replace")
