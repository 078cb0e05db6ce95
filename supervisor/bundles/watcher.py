"""Hot-loading of platform bundles from ``STOCKADE_BUNDLES_DIR``.

Every direct subfolder holding a ``bundle.yaml`` is a platform bundle. An edit
re-registers the folder; new content means a new digest, so a new version,
while runs in flight keep the version they pinned. A change that leaves the
content as it was (a touch, a chmod) registers nothing. If several folders
declare the same name, the one registered last is current (a warning says
so): at start-up the last in name order, then the one whose content changed
last. A folder that turns broken logs one warning (per distinct error) and
its previous version stays current. A folder that failed for a reason that
may pass (the store is down, the data folder is full) is tried again by
itself, backing off from a second to a minute; one folder failing never stops
the others. Every file of a bundle is watched (watchfiles' default filter
would skip ``notes~`` or ``node_modules/``, which are part of the bundle).
Each folder gets its own watch, found without following a link (a bundle folder
that is itself a link is entered, as operators link bundles in): a link to ``/``
must not have the watch walk the whole host. A folder added re-arms the watch.
A folder registers once nothing in it was modified for ``_SETTLE_S`` (a file
written in bursts does not register its first part); write elsewhere and rename
into place for edits that must land whole.
Deleting a folder does not unregister anything. If the bundles folder itself
is deleted and created again, the watch is re-armed on the new one (and it is
scanned in full); so is a watch that broke (watchfiles gives up for good on a
file name that is not UTF-8, or when the host's inotify limits are reached).
Events can also be lost without a word (the kernel's inotify queue overflows
under a big checkout; watchfiles drops the notice): every ``_SWEEP_S`` each
folder's metadata (names, sizes, mtimes, inodes; no file is read) is compared
with what it was when the folder was last scanned, and a folder that differs
is scanned again.

The watch is armed before the first full scan (the scan runs on the first
tick of ``awatch``), so nothing written around start-up is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import Change, awatch

from supervisor.bundles.digest import digest_dir, is_ignored
from supervisor.bundles.manifest import MANIFEST_FILE
from supervisor.bundles.registry import BundleRegistry, BundleVersion
from supervisor.errors import StockadeError

__all__ = ["OnChange", "bundles_dir_problem", "load_bundles_dir", "watch_bundles_dir"]

log = logging.getLogger("stockade.bundles")

OnChange = Callable[[BundleVersion], Awaitable[None] | None]
_REAPPEAR_POLL_S = 1.0
_MAX_BACKOFF_S = 60.0
_RETRY_FIRST_S = 1.0  # a folder that failed for a reason that may pass: first retry after this, then doubling
_SWEEP_S = 30.0  # the backstop for lost events (module docstring)
_STAMP_MAX = 200_000  # entries a stamp looks at; past it the stamp says so (the scan refuses such a folder anyway)
_SETTLE_S = 1.0  # a folder registers once nothing in it changed for this long (a write paused for less is one)
_DIRS_MAX = 10_000  # folders of one bundle folder given an inotify watch each


def _describe(exc: BaseException) -> str:
    """What went wrong, for the log (anyio wraps watchfiles' errors in a one-member group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, OSError) and exc.strerror:  # without the file name: a staging folder's changes each time
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{exc}" or type(exc).__name__


def _shown(text: str) -> str:
    """A name or detail from the folder, safe for a log line: a newline in a file name must not forge a
    line, a name that is not UTF-8 must not make the log handler drop the warning."""
    return text if text.isprintable() else repr(text)[1:-1]


def _is_bundle_folder(p: Path) -> bool:
    """A direct subfolder holding a ``bundle.yaml``. One unreadable folder must not hide the others:
    it counts as a bundle folder, so registering it logs why it cannot be loaded. So does one whose
    ``bundle.yaml`` is not a file (a folder, a fifo, a dangling link): a broken edit, not a deletion."""
    if p.name.startswith("."):
        return False
    try:
        manifest = p / MANIFEST_FILE
        return p.is_dir() and (manifest.is_file() or manifest.is_symlink() or manifest.exists())
    except OSError:  # e.g. EACCES: is_dir/is_file only swallow "does not exist"
        return True


def bundles_dir_problem(bundles_dir: Path) -> str | None:
    """Why ``bundles_dir`` cannot be the platform bundles folder ("does not exist", ...), or None if it can."""
    try:
        st = os.stat(bundles_dir)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be looked at: {exc.strerror or exc}"
    return None if stat.S_ISDIR(st.st_mode) else "is not a folder"


def _bundle_folders(bundles_dir: Path) -> list[Path]:
    try:
        entries = list(bundles_dir.iterdir())
    except OSError as exc:
        log.warning("cannot list bundles folder %s: %s", bundles_dir, exc.strerror)
        return []
    return sorted(p for p in entries if _is_bundle_folder(p))


async def load_bundles_dir(registry: BundleRegistry, bundles_dir: Path) -> list[BundleVersion]:
    """Register every bundle folder once, as platform bundles. Broken ones are logged and skipped."""
    loaded: list[BundleVersion] = []
    for folder in _bundle_folders(Path(bundles_dir)):
        try:
            loaded.append(await registry.register_dir(folder, None))
        except StockadeError as exc:
            log.warning("bundle folder %s not loaded: %s", _shown(folder.name), _shown(exc.detail))
        except Exception as exc:  # e.g. the store's folder cannot be written: one folder must not stop start-up
            log.warning("bundle folder %s not loaded: %s", _shown(folder.name), _shown(_describe(exc)), exc_info=True)
    _warn_duplicate_names(loaded)
    return loaded


def _warn_duplicate_names(versions: list[BundleVersion]) -> None:
    seen: set[str] = set()
    for v in versions:
        if v.name in seen:
            log.warning("several bundle folders declare the name %r; the last one registered is current", v.name)
        seen.add(v.name)


class _Watch:
    def __init__(self, registry: BundleRegistry, bundles_dir: Path, on_change: OnChange | None) -> None:
        self.registry = registry
        self.dir = bundles_dir
        self.on_change = on_change
        self.digests: dict[str, str] = {}  # folder name -> digest last registered
        self.names: dict[str, str] = {}  # folder name -> bundle name it declared
        self.errors: dict[str, str] = {}  # folder name -> last warning, to warn once
        self.retry: dict[str, tuple[float, float]] = {}  # folder name -> (monotonic time due, backoff)
        self.stamps: dict[str, str] = {}  # folder name -> its metadata stamp when last scanned
        self.next_sweep = time.monotonic() + _SWEEP_S

    async def scan_all(self) -> None:
        for folder in _bundle_folders(self.dir):
            await self.scan_one(folder.name)

    def _digest(self, folder: Path) -> str | None:
        try:
            return digest_dir(folder, max_files=self.registry.max_files, max_bytes=self.registry.max_bytes)
        except StockadeError:
            return None  # let the registration say what is wrong

    def _still_there(self, folder_name: str) -> bool:
        """Forget a folder deleted or renamed since (its events do not name it any more)."""
        if _is_bundle_folder(self.dir / folder_name):
            return True
        self.digests.pop(folder_name, None)
        self.names.pop(folder_name, None)
        return False

    async def scan_one(self, folder_name: str) -> None:
        """Register the folder if its content changed. Whatever goes wrong is this folder's alone: it is
        logged (once per distinct reason) and, if it may pass, retried later without waiting for an edit."""
        backoff = self.retry.pop(folder_name, (0.0, 0.0))[1]
        # a file written in several bursts: its first part is not a version (a bundle.yaml cut before its
        # `policy:` would register a bundle without its narrowing rules); wait until the folder is quiet
        wait = await asyncio.to_thread(_unsettled_for, self.dir / folder_name)
        if wait > 0:
            self.retry[folder_name] = (time.monotonic() + wait, backoff)
            return
        # before the scan reads anything: an edit landing during the scan differs from it at the next sweep
        self.stamps[folder_name] = await asyncio.to_thread(_stamp, self.dir / folder_name)
        try:
            version = await self._register(folder_name)
        except Exception as exc:
            if isinstance(exc, StockadeError):
                self._failed(folder_name, exc.detail, expected=True)
                retry = exc.retryable  # e.g. store.unavailable
            else:  # not the folder's fault (a full disk, a damaged store): logged with its traceback
                self._failed(folder_name, _describe(exc), expected=False)
                retry = True
            if retry:  # no edit may ever come to try it again
                backoff = min(backoff * 2, _MAX_BACKOFF_S) if backoff else _RETRY_FIRST_S
                self.retry[folder_name] = (time.monotonic() + backoff, backoff)
            return
        if version is not None and self.on_change is not None:
            try:
                result = self.on_change(version)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("bundle hot-load: on_change failed for %s", version.name)

    async def sweep(self) -> None:
        """Scan again every folder whose metadata changed since it was last scanned (lost events)."""
        self.next_sweep = time.monotonic() + _SWEEP_S
        folders = await asyncio.to_thread(_bundle_folders, self.dir)
        for gone in set(self.stamps) - {f.name for f in folders}:
            del self.stamps[gone]
        for folder in folders:
            if self.stamps.get(folder.name) != await asyncio.to_thread(_stamp, folder):
                await self.scan_one(folder.name)

    async def retry_due(self) -> None:
        now = time.monotonic()
        for folder_name in sorted(f for f, (due, _) in self.retry.items() if due <= now):
            await self.scan_one(folder_name)

    def _failed(self, folder_name: str, detail: str, expected: bool) -> None:
        if self.errors.get(folder_name) == detail:
            return
        self.errors[folder_name] = detail
        how = "not reloaded, keeping its previous version" if folder_name in self.digests else "not loaded"
        log.warning("bundle folder %s %s: %s", _shown(folder_name), how, _shown(detail), exc_info=not expected)

    async def _register(self, folder_name: str) -> BundleVersion | None:
        """The version registered, if it is new for this folder; raises what registration raises."""
        folder = self.dir / folder_name
        if not _is_bundle_folder(folder):
            self.digests.pop(folder_name, None)
            self.names.pop(folder_name, None)
            return None
        if folder_name in self.digests and await asyncio.to_thread(self._digest, folder) == self.digests[folder_name]:
            # touched, not changed (mtime, chmod, a checkout): registering it again would make it current
            # again, silently taking the name back from another folder that declares the same name
            self.errors.pop(folder_name, None)
            return None
        version = await self.registry.register_dir(folder, None)
        self.errors.pop(folder_name, None)
        if self.digests.get(folder_name) == version.digest:
            return None
        self.digests[folder_name] = version.digest
        self.names[folder_name] = version.name
        log.info("bundle %s %s registered (%s)", _shown(version.name), _shown(version.version), version.digest[:19])
        others = sorted(
            f for f, n in list(self.names.items())
            if n == version.name and f != folder_name and self._still_there(f)
        )
        if others:
            log.warning("bundle folders %s and %s declare the same name %r; the one registered last (%s) is current",
                        _shown(folder_name), _shown(", ".join(others)), version.name, _shown(folder_name))
        return version

    def folder_of(self, path: str) -> str | None:
        try:
            rel = Path(path).relative_to(self.dir)
        except ValueError:
            return None
        if len(rel.parts) < 1 or rel.parts[0].startswith("."):
            return None
        if len(rel.parts) == 1 and not (self.dir / rel.parts[0]).is_dir():
            return None  # a loose file in the bundles folder, or a folder that was deleted
        return rel.parts[0]


async def watch_bundles_dir(
    registry: BundleRegistry,
    bundles_dir: Path,
    *,
    stop: asyncio.Event,
    on_change: OnChange | None = None,
    ready: asyncio.Event | None = None,
    debounce_ms: int = 1600,
    step_ms: int = 250,
) -> None:
    """Register every bundle folder, then re-register folders as they change, until ``stop`` is set.

    ``on_change(version)`` (sync or async) runs whenever a folder registers a digest
    different from the last one seen for it (including the first scan). ``ready`` is
    set once the watch is armed and the first scan is done.
    """
    directory = await asyncio.to_thread(Path(bundles_dir).resolve)
    if not directory.is_dir():
        log.warning("bundles folder %s does not exist; no platform bundles are hot-loaded", bundles_dir)
        if ready is not None:
            ready.set()
        return
    watch = _Watch(registry, directory, on_change)
    failure, backoff = "", _REAPPEAR_POLL_S
    while not stop.is_set():
        # stat() follows links: a bundles folder that is a symlink re-pointed at another folder is "replaced" too
        identity = await asyncio.to_thread(_identity, Path(bundles_dir))
        if identity is None:  # replaced (rm -rf + recreate, a new mount): wait for it to come back
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _REAPPEAR_POLL_S)
            continue
        armed = time.monotonic()
        try:
            watch.dir = await asyncio.to_thread(Path(bundles_dir).resolve)
            rearm = await _watch_until_replaced(watch, Path(bundles_dir), identity, stop, ready, debounce_ms, step_ms)
        except Exception as exc:
            # the folder vanished while arming, the host's inotify limits are reached, or watchfiles gave up
            # (for good: it cannot decode a file name that is not UTF-8): re-armed, the folder scanned in full
            if time.monotonic() - armed > _MAX_BACKOFF_S:  # it had been watching fine: a new failure
                failure, backoff = "", _REAPPEAR_POLL_S
            if _describe(exc) != failure:
                failure = _describe(exc)
                log.warning("cannot watch bundles folder %s (retrying): %s", bundles_dir, _shown(failure))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            continue
        failure, backoff = "", _REAPPEAR_POLL_S
        ready = None  # set once, after the first full scan
        if not stop.is_set() and not rearm:
            log.warning("bundles folder %s was removed or replaced; watching it again once it is back", bundles_dir)


def _unsettled_for(folder: Path) -> float:
    """Seconds until the folder's newest file or folder is ``_SETTLE_S`` old (0: quiet long enough). A
    time in the future (a skewed clock, ``touch -d``) does not count: it would hold the folder back for good."""
    now, newest, seen = time.time_ns(), 0, 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not is_ignored(d, is_dir=True)]
        names = [f for f in files if not is_ignored(f, is_dir=False)]  # an editor's swap file is not the bundle
        for name in [*names, *dirs, "."]:  # a folder's own time: a file copied in with an old time (cp -p)
            seen += 1
            if seen > _STAMP_MAX:
                return 0.0
            with contextlib.suppress(OSError):
                mtime = os.lstat(os.path.join(root, name)).st_mtime_ns
                if mtime <= now:
                    newest = max(newest, mtime)
    return max(0.0, _SETTLE_S - (now - newest) / 1e9)


def _stamp(folder: Path) -> str:
    """A digest of the folder's metadata - every entry's path, type, size, mtime and inode - without
    reading a file. ``""`` if it cannot be listed at all."""
    h = hashlib.sha256()
    seen = 0
    try:
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs.sort()
            for name in sorted(files) + dirs:
                seen += 1
                if seen > _STAMP_MAX:
                    h.update(b"\0too many")
                    return h.hexdigest()
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                h.update(os.fsencode(os.path.join(root, name)) + b"\0")
                h.update(f"{st.st_mode},{st.st_size},{st.st_mtime_ns},{st.st_ino}\0".encode())
        st = os.stat(folder)
        h.update(f"{st.st_mode},{st.st_ino}".encode())
    except OSError:
        return ""
    return h.hexdigest()


class _Relevant:
    """Drops only changes a bundle cannot contain (the ``is_ignored`` rules of ``digest.py``): under a
    hidden or ``__pycache__`` folder (``.git``), or to a hidden name (editor swap files)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def __call__(self, change: Change, path: str) -> bool:
        try:
            parts = Path(path).relative_to(self.root).parts
        except ValueError:
            return True
        return not parts or not (
            any(is_ignored(p, is_dir=True) for p in parts[:-1]) or parts[-1].startswith(".")
        )


def _watch_paths(root: Path) -> list[str]:
    """Every folder the watch arms one (non-recursive) inotify watch on: the bundles folder, and each of its
    subfolders found without following a link. A direct entry that is a link is entered only if it is a
    bundle folder (operators link bundles in), and links inside it are not followed either. watchfiles'
    recursive mode follows every link it meets: one link to ``/`` in the bundles folder (or in a bundle)
    had it walk the whole host, never arming, so no edit was ever hot-loaded again, and not a word said."""
    out = [str(root)]
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        try:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if entry.is_symlink() and not _is_bundle_folder(Path(entry.path)):
                continue
        except OSError:
            continue
        walked = 0
        for folder, dirs, _ in os.walk(entry.path, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not is_ignored(d, is_dir=True))
            out.append(folder)
            walked += 1
            if walked >= _DIRS_MAX:  # far more than a bundle may hold: its registration refuses it anyway
                break
        if len(out) > _STAMP_MAX:
            break
    return out


def _new_folder(root: Path, changes: set[tuple[Change, str]]) -> bool:
    """Whether a change added a (real) folder the watch does not cover yet: the watch must be armed again."""
    for change, path in changes:
        if change == Change.added and path != str(root):
            # a link is followed only right in the bundles folder (a linked-in bundle: ``_watch_paths``)
            look = os.stat if os.path.dirname(path) == str(root) else os.lstat
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(look(path).st_mode):
                    return True
    return False


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        st = directory.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


async def _watch_until_replaced(
    watch: _Watch, bundles_dir: Path, identity: tuple[int, int], stop: asyncio.Event, ready: asyncio.Event | None,
    debounce_ms: int, step_ms: int,
) -> bool:
    """One inotify watch of the folder, from a full scan until ``stop`` or until the folder is replaced.

    The watch is bound to the folder's inode: once that folder is deleted (even if one of the same
    name is created right after) no change would ever be reported again, so this returns instead.
    It also returns (True: arm again, quietly) once a folder was added, which its watch does not cover
    (``_watch_paths``: one watch per folder, none following a link).
    """
    first = True
    # step: wait for this much quiet before reacting, so a multi-file copy lands as one version;
    # rust_timeout + yield_on_timeout: the first tick comes quickly even when nothing changes, and
    # later ones come at least every half second, to notice a replaced folder and retry failed folders.
    # our own filter: watchfiles' default one skips names (`notes~`, `node_modules/`) that are part of a bundle.
    paths = await asyncio.to_thread(_watch_paths, watch.dir)
    ticks = awatch(
        *paths, stop_event=stop, debounce=debounce_ms, step=step_ms, rust_timeout=500, yield_on_timeout=True,
        watch_filter=_Relevant(str(watch.dir)), recursive=False,
    )
    async with contextlib.aclosing(ticks):  # returning early must release the inotify watch now
        async for changes in ticks:
            try:
                if first:
                    first = False
                    try:
                        await watch.scan_all()
                    finally:
                        if ready is not None:
                            ready.set()
                    continue
                root = str(watch.dir)
                if any(c == Change.deleted and p == root for c, p in changes) or (
                    await asyncio.to_thread(_identity, bundles_dir) != identity
                ):  # (the inode alone is not enough: a new folder may get the number just freed)
                    return False
                folders = {f for _, path in changes if (f := watch.folder_of(path)) is not None}
                for name in sorted(folders):
                    await watch.scan_one(name)
                await watch.retry_due()
                if time.monotonic() >= watch.next_sweep:
                    await watch.sweep()
                if await asyncio.to_thread(_new_folder, watch.dir, changes):
                    return True  # armed again at once; its first tick scans every folder (what changed registers)
            except Exception:  # the watcher must outlive a hiccup (scan_one keeps each folder's to itself)
                log.exception("bundle hot-load failed")
    return False
