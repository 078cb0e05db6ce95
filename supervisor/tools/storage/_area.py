"""One tenant's storage directory: atomic writes, snapshots for rollback, a quota. Blocking; run in a thread.

Layout under ``<data_dir>/storage/<tenant_id>/``::

    u/<user_id>/...        user scope (live files)
    shared/...             shared scope (live files)
    .versions/<scope>/<sha256(path)[:40]>/<ns>.f|.absent   snapshots, newest last
    .tmp/                  temp files of in-flight writes (same file system: rename is atomic)
    .lock                  flock: one writer per tenant at a time, across threads and processes
    .usage                 "<bytes> <computed_at>": the quota counter (see ``_usage_get``)

Snapshots live outside the scope roots, so no storage key can reach or forge
them. Every write/delete first snapshots what was there (a hard link to the old
inode, or an ``.absent`` marker when the path was new); ``rollback`` pops the
newest snapshot back into place (restoring, or removing a file that did not
exist), so a rollback undoes exactly the last write or delete of that path.

Quota: live files *and* snapshots of the tenant count against
``storage_quota_mb``, and so does every directory, at ``DIR_BYTES`` (a block
on disk) each: otherwise empty files under deep keys (``a/a/.../a/f``, up to
~500 directories per write) would fill the disk while counting 0 bytes. When a write would not fit, the tenant's oldest
snapshots are dropped first (history is best-effort, live data is not; a
snapshot directory dropped with its last snapshot counts as room made); if it
still does not fit, ``storage.quota`` and nothing changes. Every file - live, snapshot or
``.absent`` marker - is charged at least ``FILE_BYTES`` (``charged``): otherwise empty files were free
once the quota had dropped their history, and a bundle could keep making them (each an inode on the
host) by cycling writes and rollbacks of a filler. The charge is never below the bytes a file holds,
and never more than a block above them. What else adds
directories asks the same: a ``rollback`` that brings back the parents a delete
pruned (``storage.quota`` if they do not fit), a ``delete`` whose snapshot needs
a new directory (if even dropping all history leaves no room, the file is
deleted without a snapshot: a delete is never refused for the quota).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from supervisor.errors import StockadeError
from supervisor.fspath import resolve
from supervisor.resources.paths import check_segment, resolve_storage_path
from supervisor.storable import is_utf8_name

__all__ = ["DIR_BYTES", "FILE_BYTES", "MAX_VERSIONS", "Located", "TenantArea", "charged"]

MAX_VERSIONS = 10  # snapshots kept per path
_USAGE_TTL_S = 300.0  # the byte counter is re-walked at least this often
_LIST_LIMIT = 1000
DIR_BYTES = 4096  # what one directory is charged against the quota
FILE_BYTES = 4096  # the least one file is charged (a block): an empty file is not free


def charged(size: int) -> int:
    """What a file of ``size`` bytes counts against the quota."""
    return max(size, FILE_BYTES)


@dataclass(frozen=True)
class Located:
    scope: str  # "u/<user>" | "shared"
    root: Path  # real scope root
    path: Path  # real target path
    rel: str  # POSIX path relative to the scope root ("" = the root)


class TenantArea:
    def __init__(self, data_dir: Path, tenant_id: str, quota_bytes: int) -> None:
        self.base = resolve(Path(data_dir) / "storage") / check_segment(tenant_id, "tenant id")
        self.quota_bytes = quota_bytes

    # ------------------------------------------------------------------ resolution

    def locate(self, scope: str, raw: str, *, allow_root: bool = False) -> Located:
        expected = self.base.joinpath(*scope.split("/"))
        real = resolve(expected)
        if real != expected:  # a planted symlink at the tenant or scope level
            raise StockadeError("storage.escape", "the storage scope directory is a link")
        target = resolve_storage_path(expected, raw, allow_root=allow_root)
        rel = target.relative_to(real).as_posix() if target != real else ""
        if not is_utf8_name(rel):  # a link put there by other means, to a name no key can spell
            raise StockadeError("input.invalid", "the storage path resolves to a name that is not UTF-8 text")
        return Located(scope, real, target, rel)

    # ------------------------------------------------------------------ operations

    def read(self, loc: Located, max_bytes: int) -> bytes:
        try:
            # O_RDONLY opens a directory too, and would block forever on a FIFO someone put in the area
            # (a worker thread lost for good); O_NONBLOCK changes nothing for a regular file
            fd = os.open(loc.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StockadeError("storage.not_found", f"no file {loc.rel!r}") from None
        except (IsADirectoryError, NotADirectoryError):
            raise StockadeError("storage.not_found", f"{loc.rel!r} is not a file") from None
        except OSError as exc:  # ELOOP: swapped for a link after resolution
            raise StockadeError("storage.escape", f"cannot open {loc.rel!r} safely ({exc.strerror})") from None
        try:  # judge the open file, not the name: a directory or FIFO never reaches fdopen
            st = os.fstat(fd)
            if not _is_file(st.st_mode):
                raise StockadeError("storage.not_found", f"{loc.rel!r} is not a file")
            if st.st_size > max_bytes:
                raise StockadeError("input.too_large", f"{loc.rel!r} is {st.st_size} bytes; reads are capped at {max_bytes}")
            f = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            return f.read(max_bytes + 1)[:max_bytes]

    def write(self, loc: Located, data: bytes) -> bool:
        """Atomically replace (or create) the file; True if it was created."""
        with self._locked():
            if loc.path.is_dir():
                raise StockadeError("input.invalid", f"{loc.rel!r} is a directory")
            existed = loc.path.is_file()
            _check_parents(loc)
            used = self._usage_get()
            vdir = self._versions_dir(loc)
            new_dirs = self._missing_dirs(loc.path.parent) + self._missing_dirs(vdir)
            # may drop old snapshots: only after every other check
            marker = 0 if existed else FILE_BYTES  # a new path's snapshot is an ``.absent`` marker file
            used -= self._make_room(used, charged(len(data)) + marker + new_dirs * DIR_BYTES, keep=vdir)
            loc.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._temp_file(data)
            try:
                self._snapshot(loc, keep_old=existed)  # the old bytes stay counted, now as a snapshot
                os.replace(tmp, loc.path)
            finally:
                tmp.unlink(missing_ok=True)
            used += charged(len(data)) + marker + new_dirs * DIR_BYTES - self._trim_versions(loc)
            self._usage_set(used)
            return not existed

    def delete(self, loc: Located) -> None:
        with self._locked():
            if not loc.path.is_file() or loc.path.is_symlink():
                raise StockadeError("storage.not_found", f"no file {loc.rel!r}")
            vdir = self._versions_dir(loc)
            used = self._usage_get()  # before any mkdir: a recount must not see the new directories twice
            new_dirs = self._missing_dirs(vdir)
            if new_dirs:  # the snapshot's directories count too (the file's bytes are counted already)
                try:
                    used -= self._make_room(used, new_dirs * DIR_BYTES, keep=vdir)
                except StockadeError:  # not even dropping all history makes room: delete without a snapshot
                    size = charged(loc.path.stat().st_size)
                    loc.path.unlink()
                    pruned = _prune_empty_dirs(loc.path.parent, loc.root)
                    self._usage_set(used - size - pruned * DIR_BYTES)
                    return
            vdir.mkdir(parents=True, exist_ok=True)
            os.replace(loc.path, vdir / f"{self._next_stamp(vdir)}.f")  # the snapshot *is* the old inode
            used -= self._trim_versions(loc)
            pruned = _prune_empty_dirs(loc.path.parent, loc.root)
            self._usage_set(used + (new_dirs - pruned) * DIR_BYTES)

    def rollback(self, loc: Located) -> str:
        """Undo the last write/delete of the path; ``"restored"`` or ``"removed"``."""
        with self._locked():
            vdir = self._versions_dir(loc)
            snaps = _snapshots(vdir)
            if not snaps:
                raise StockadeError("storage.not_found", f"no earlier version of {loc.rel!r}")
            latest = snaps[-1]
            used = self._usage_get()
            new_dirs = 0
            if loc.path.is_file():
                used -= charged(loc.path.stat().st_size)  # the current content is discarded; the snapshot becomes live
            if latest.suffix == ".absent":
                if loc.path.is_file():
                    loc.path.unlink()
                    new_dirs -= _prune_empty_dirs(loc.path.parent, loc.root)
                latest.unlink()
                used -= FILE_BYTES  # the marker
                outcome = "removed"
            else:
                if loc.path.is_dir():
                    raise StockadeError("input.invalid", f"{loc.rel!r} is now a directory")
                _check_parents(loc)  # before any snapshot is dropped to make room
                missing = self._missing_dirs(loc.path.parent)
                # the parents a delete pruned come back: they count, so they must fit (the snapshot
                # directory goes away when this was its last snapshot)
                grown = missing * DIR_BYTES - (DIR_BYTES if len(snaps) == 1 else 0)
                if grown > 0:
                    used -= self._make_room(used, grown, keep=vdir, spare=latest)
                try:
                    loc.path.parent.mkdir(parents=True, exist_ok=True)
                    new_dirs += missing
                except (FileExistsError, NotADirectoryError):
                    raise StockadeError("input.invalid", f"a parent of {loc.rel!r} is now a file") from None
                os.replace(latest, loc.path)
                outcome = "restored"
            if not _snapshots(vdir):
                shutil.rmtree(vdir, ignore_errors=True)
                if not vdir.exists():
                    new_dirs -= 1
            self._usage_set(used + new_dirs * DIR_BYTES)
            return outcome

    def list(self, loc: Located) -> tuple[list[dict[str, object]], bool]:
        if not loc.path.exists():
            if loc.rel == "":
                return [], False
            raise StockadeError("storage.not_found", f"no directory {loc.rel!r}")
        if not loc.path.is_dir():
            raise StockadeError("input.invalid", f"{loc.rel!r} is a file, not a directory")
        entries: list[dict[str, object]] = []
        # listing takes no lock: a concurrent call of the run may delete the directory, turn it into a
        # file or delete an entry while we read it; the listing is then of the moment, never an OSError
        try:
            with os.scandir(loc.path) as it:
                for e in it:
                    if not is_utf8_name(e.name):  # put there by other means: no key can reach it, no reply can carry it
                        continue
                    try:
                        if e.is_symlink():
                            kind, size = "link", 0
                        elif e.is_dir(follow_symlinks=False):
                            kind, size = "dir", 0
                        elif e.is_file(follow_symlinks=False):
                            kind, size = "file", e.stat(follow_symlinks=False).st_size
                        else:
                            continue
                    except FileNotFoundError:
                        continue  # deleted between readdir and stat
                    entries.append({"name": e.name, "type": kind, "size": size})
        except FileNotFoundError:
            raise StockadeError("storage.not_found", f"no directory {loc.rel!r}") from None
        except NotADirectoryError:
            raise StockadeError("input.invalid", f"{loc.rel!r} is a file, not a directory") from None
        entries.sort(key=lambda x: str(x["name"]))
        return entries[:_LIST_LIMIT], len(entries) > _LIST_LIMIT

    def usage(self) -> int:
        """Charged bytes of live files and snapshots (not in-flight temp files) plus ``DIR_BYTES`` per directory
        below the tenant directory, by walking the tree."""
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.base, followlinks=False):
            if dirpath == str(self.base):
                dirnames[:] = [d for d in dirnames if d != ".tmp"]
                filenames = [f for f in filenames if f not in (".lock", ".usage")]
            total += DIR_BYTES * sum(1 for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
            for name in filenames:
                try:
                    total += charged(os.lstat(os.path.join(dirpath, name)).st_size)
                except FileNotFoundError:
                    pass
        return total

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.base / ".lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _usage_get(self) -> int:
        """The tenant's byte count: the ``.usage`` counter (kept up to date under the lock by every
        operation), recomputed by a full walk when missing, unreadable or older than ``_USAGE_TTL_S``
        (so files an operator changed by hand are picked up). Walking on every write would cost
        O(files) per write."""
        try:
            value, computed_at = (self.base / ".usage").read_text().split()
            if time.time() - float(computed_at) < _USAGE_TTL_S:
                return int(value)
        except (OSError, ValueError):
            pass
        total = self.usage()
        self._usage_set(total, recomputed=True)
        return total

    def _usage_set(self, value: int, *, recomputed: bool = False) -> None:
        path = self.base / ".usage"
        computed_at = time.time()
        if not recomputed:
            try:
                computed_at = float(path.read_text().split()[1])
            except (OSError, ValueError, IndexError):
                pass
        path.write_text(f"{max(0, value)} {computed_at}")

    def _make_room(self, used: int, incoming: int, *, keep: Path, spare: Path | None = None) -> int:
        """Ensure used + incoming fits, dropping the oldest snapshots (never ``spare``) if that is enough
        (else change nothing and raise ``storage.quota``); return the bytes freed. A snapshot directory
        left empty is removed too (and its ``DIR_BYTES`` freed, which counts towards the room made),
        except ``keep``: the caller already counted on it."""
        over = used + incoming - self.quota_bytes
        if over <= 0:
            return 0
        snaps = self._all_snapshots_oldest_first()
        left: dict[Path, int] = {}
        for snap in snaps:
            left[snap.parent] = left.get(snap.parent, 0) + 1
        victims: list[Path] = []
        freed = room = 0
        for snap in snaps:
            if snap == spare:
                continue
            victims.append(snap)
            size = charged(snap.stat().st_size)
            freed += size
            room += size
            left[snap.parent] -= 1
            if not left[snap.parent] and snap.parent != keep:
                room += DIR_BYTES  # its directory goes with its last snapshot
            if room >= over:
                break
        if room < over:
            raise StockadeError(
                "storage.quota", f"the tenant's storage quota of {self.quota_bytes // (1024 * 1024)} MB would be exceeded",
                quota_bytes=self.quota_bytes,
            )
        for snap in victims:
            snap.unlink(missing_ok=True)
        for vdir in {snap.parent for snap in victims} - {keep}:
            try:
                vdir.rmdir()  # only when empty
                freed += DIR_BYTES
            except OSError:
                pass
        return freed

    def _missing_dirs(self, d: Path) -> int:
        """How many directories ``mkdir(parents=True)`` of ``d`` would create below the tenant directory."""
        n = 0
        while d != self.base and d.is_relative_to(self.base) and not os.path.lexists(d):
            n += 1
            d = d.parent
        return n

    def _all_snapshots_oldest_first(self) -> list[Path]:
        root = self.base / ".versions"
        snaps = [p for p in root.rglob("*") if p.suffix in (".f", ".absent") and p.is_file()] if root.exists() else []
        return sorted(snaps, key=lambda p: p.stem)

    def _temp_file(self, data: bytes) -> Path:
        tmp_dir = self.base / ".tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{time.time_ns()}-{os.getpid()}-{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)  # the rename must not publish an empty file after a crash
        finally:
            os.close(fd)
        return tmp

    def _versions_dir(self, loc: Located) -> Path:
        return self.base / ".versions" / loc.scope / hashlib.sha256(loc.rel.encode("utf-8")).hexdigest()[:40]

    def _snapshot(self, loc: Located, *, keep_old: bool) -> None:
        vdir = self._versions_dir(loc)
        vdir.mkdir(parents=True, exist_ok=True)
        stamp = self._next_stamp(vdir)
        if not keep_old:
            (vdir / f"{stamp}.absent").touch()
            return
        snap = vdir / f"{stamp}.f"
        try:
            os.link(loc.path, snap, follow_symlinks=False)  # old inode survives the replace; no copy
        except OSError:
            shutil.copy2(loc.path, snap, follow_symlinks=False)

    @staticmethod
    def _next_stamp(vdir: Path) -> str:
        snaps = _snapshots(vdir)
        now = time.time_ns()
        if snaps:
            now = max(now, int(snaps[-1].stem) + 1)
        return f"{now:020d}"

    def _trim_versions(self, loc: Located) -> int:
        """Keep the newest ``MAX_VERSIONS`` snapshots of the path; return the bytes freed."""
        freed = 0
        for old in _snapshots(self._versions_dir(loc))[:-MAX_VERSIONS]:
            freed += charged(old.stat().st_size)
            old.unlink(missing_ok=True)
        return freed


def _snapshots(vdir: Path) -> list[Path]:
    if not vdir.is_dir():
        return []
    return sorted((p for p in vdir.iterdir() if p.suffix in (".f", ".absent")), key=lambda p: p.stem)



def _is_file(mode: int) -> bool:
    return stat.S_ISREG(mode)


def _check_parents(loc: Located) -> None:
    parent = loc.path.parent
    while parent != loc.root and parent.is_relative_to(loc.root):
        if parent.exists() and not parent.is_dir():
            raise StockadeError("input.invalid", f"a parent of {loc.rel!r} is a file")
        parent = parent.parent


def _prune_empty_dirs(start: Path, stop: Path) -> int:
    """Remove now-empty directories from ``start`` up to (not including) ``stop``; return how many."""
    d, n = start, 0
    while d != stop and d.is_relative_to(stop):
        try:
            d.rmdir()
        except OSError:
            return n
        n += 1
        d = d.parent
    return n
