"""Hot-loading of platform bundles from ``STOCKADE_BUNDLES_DIR``.

Every direct subfolder holding a ``bundle.yaml`` is a platform bundle. An edit
re-registers the folder; new content means a new digest, so a new version,
while runs in flight keep the version they pinned. A folder that turns broken
logs one warning (per distinct error) and its previous version stays current.
Deleting a folder does not unregister anything.

The watch is armed before the first full scan (the scan runs on the first
tick of ``awatch``), so nothing written around start-up is missed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import awatch

from supervisor.bundles.manifest import MANIFEST_FILE
from supervisor.bundles.registry import BundleRegistry, BundleVersion
from supervisor.errors import StockadeError

__all__ = ["OnChange", "load_bundles_dir", "watch_bundles_dir"]

log = logging.getLogger("stockade.bundles")

OnChange = Callable[[BundleVersion], Awaitable[None] | None]


def _bundle_folders(bundles_dir: Path) -> list[Path]:
    try:
        return sorted(
            p for p in bundles_dir.iterdir()
            if not p.name.startswith(".") and p.is_dir() and (p / MANIFEST_FILE).is_file()
        )
    except OSError as exc:
        log.warning("cannot list bundles folder %s: %s", bundles_dir, exc.strerror)
        return []


async def load_bundles_dir(registry: BundleRegistry, bundles_dir: Path) -> list[BundleVersion]:
    """Register every bundle folder once, as platform bundles. Broken ones are logged and skipped."""
    loaded: list[BundleVersion] = []
    for folder in _bundle_folders(Path(bundles_dir)):
        try:
            loaded.append(await registry.register_dir(folder, None))
        except StockadeError as exc:
            log.warning("bundle folder %s not loaded: %s", folder.name, exc.detail)
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
        self.errors: dict[str, str] = {}  # folder name -> last warning, to warn once

    async def scan_all(self) -> None:
        for folder in _bundle_folders(self.dir):
            await self.scan_one(folder.name)

    async def scan_one(self, folder_name: str) -> None:
        folder = self.dir / folder_name
        if not (folder / MANIFEST_FILE).is_file():
            self.digests.pop(folder_name, None)
            return
        try:
            version = await self.registry.register_dir(folder, None)
        except StockadeError as exc:
            if self.errors.get(folder_name) != exc.detail:
                self.errors[folder_name] = exc.detail
                log.warning("bundle folder %s not reloaded, keeping its previous version: %s", folder_name, exc.detail)
            return
        self.errors.pop(folder_name, None)
        if self.digests.get(folder_name) == version.digest:
            return
        self.digests[folder_name] = version.digest
        log.info("bundle %s %s registered (%s)", version.name, version.version, version.digest[:19])
        if self.on_change is not None:
            result = self.on_change(version)
            if inspect.isawaitable(result):
                await result

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
    first = True
    # step: wait for this much quiet before reacting, so a multi-file copy lands as one version;
    # rust_timeout + yield_on_timeout: the first tick comes quickly even when nothing changes.
    async for changes in awatch(
        directory, stop_event=stop, debounce=debounce_ms, step=step_ms, rust_timeout=500, yield_on_timeout=True,
    ):
        try:
            if first:
                first = False
                try:
                    await watch.scan_all()
                finally:
                    if ready is not None:
                        ready.set()
                continue
            folders = {f for _, path in changes if (f := watch.folder_of(path)) is not None}
            for name in sorted(folders):
                await watch.scan_one(name)
        except Exception:  # the watcher must outlive a store hiccup; the next change retries
            log.exception("bundle hot-load failed")
