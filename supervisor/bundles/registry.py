"""The bundle registry: immutable, content-hashed versions on disk, indexed in the ``BundleStore``.

Layout: ``<root>/<tenant_id or _platform>/<name>/<digest hex>/`` — written once
into ``<root>/.staging`` then renamed into place, never modified after (files
0444, so the sandbox's uid can read them and nobody edits them by accident).
The same content registered twice reuses the folder. A run pins the digest
it was created with (``get``), so later versions never change a run in flight;
``get`` re-hashes the stored copy, so files changed after registration are
refused rather than run under the digest of other content (registering the
same content again repairs the copy).

Multi-node note: ``root`` (``<data_dir>/bundles``) must be shared by the API
and worker processes (one volume); the store only indexes versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.bundles._snapshot import snapshot_dir
from supervisor.bundles.archive import extract_archive
from supervisor.bundles.digest import DIGEST_PREFIX, digest_dir, digest_files, is_digest
from supervisor.bundles.manifest import NAME_PATTERN, BundleManifest, validate_bundle_files
from supervisor.errors import StockadeError
from supervisor.stores.ports import BundleStore

__all__ = ["PLATFORM_SCOPE", "BundleRegistry", "BundleVersion"]

log = logging.getLogger("stockade.bundles")

PLATFORM_SCOPE = "_platform"
_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")  # never "_platform" nor ".staging"


@dataclass(frozen=True)
class BundleVersion:
    name: str
    version: str
    digest: str  # "sha256:<hex>"
    tenant_id: str | None  # None = a platform bundle every tenant may run
    path: Path  # the immutable copy; bind it read-only into the sandbox
    manifest: BundleManifest

    def to_dict(self) -> dict[str, Any]:
        """Public JSON view (no server paths)."""
        return {
            "name": self.name, "version": self.version, "digest": self.digest,
            "scope": "platform" if self.tenant_id is None else "tenant",
            "description": self.manifest.description, "entrypoint": self.manifest.entrypoint,
            "tools": list(self.manifest.tools), "limits": self.manifest.limits.requested(),
            "has_policy": self.manifest.policy is not None,
        }


def _check_tenant(tenant_id: str | None) -> None:
    if tenant_id is not None and not _TENANT_ID.match(tenant_id):
        raise StockadeError("input.invalid", "invalid tenant id")


def _not_found(name: str, digest: str | None = None) -> StockadeError:
    what = f"{name}@{digest}" if digest else name
    return StockadeError("bundle.not_found", f"no bundle {what!r}", bundle=name)


class BundleRegistry:
    def __init__(
        self, store: BundleStore, root: Path, *, max_files: int = 1000, max_bytes: int = 20 * 1024 * 1024
    ) -> None:
        self._store = store
        self.root = Path(root)
        self.max_files = max_files
        self.max_bytes = max_bytes

    # --- registration
    async def register_dir(self, src: Path, tenant_id: str | None) -> BundleVersion:
        """Validate the folder and register it as a new immutable version (or reuse an identical one).

        A folder inside the store (e.g. a bundles-folder link to another tenant's version) is refused.
        """
        _check_tenant(tenant_id)
        return await self._publish(
            tenant_id, *await asyncio.to_thread(self._prepare_dir, Path(src), tenant_id, outside=self.root)
        )

    async def register_archive(self, data: bytes, tenant_id: str | None) -> BundleVersion:
        """Like ``register_dir`` for an uploaded tar.gz or zip (hostile input; see ``archive``)."""
        _check_tenant(tenant_id)
        return await self._publish(tenant_id, *await asyncio.to_thread(self._prepare_archive, data, tenant_id))

    async def _publish(
        self, tenant_id: str | None, manifest: BundleManifest, digest: str, path: Path, created: bool
    ) -> BundleVersion:
        # files first, index second: the store never points at a version whose files are incomplete
        try:
            await self._store.put_version(tenant_id, manifest.name, manifest.version, digest, manifest.to_record())
        except StockadeError as exc:
            # refused for good (e.g. unknown tenant): leave no orphan copy; an outage keeps it for the retry
            if created and not exc.retryable:
                await asyncio.to_thread(shutil.rmtree, path, True)
            raise
        return BundleVersion(manifest.name, manifest.version, digest, tenant_id, path, manifest)

    def _prepare_archive(self, data: bytes, tenant_id: str | None) -> tuple[BundleManifest, str, Path, bool]:
        staging = self._staging()
        tmp = Path(tempfile.mkdtemp(prefix="upload-", dir=staging))
        try:
            bundle_root = extract_archive(data, tmp / "x", max_files=self.max_files, max_bytes=self.max_bytes)
            return self._prepare_dir(bundle_root, tenant_id)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _prepare_dir(
        self, src: Path, tenant_id: str | None, outside: Path | None = None
    ) -> tuple[BundleManifest, str, Path, bool]:
        files = snapshot_dir(src, max_files=self.max_files, max_bytes=self.max_bytes, outside=outside)
        manifest = validate_bundle_files(files)
        digest = digest_files(files.items())
        return (manifest, digest, *self._materialize(files, tenant_id, manifest.name, digest))

    def _staging(self) -> Path:
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        return staging

    def _path(self, tenant_id: str | None, name: str, digest: str) -> Path:
        return self.root / (tenant_id or PLATFORM_SCOPE) / name / digest[len(DIGEST_PREFIX):]

    def _materialize(
        self, files: Mapping[str, bytes], tenant_id: str | None, name: str, digest: str
    ) -> tuple[Path, bool]:
        """The immutable copy, and whether this call created it."""
        final = self._path(tenant_id, name, digest)
        exists = final.is_dir()
        if exists and self._intact(final, digest):
            return final, False  # content-addressed: same digest, same bytes
        tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self._staging()))
        try:
            for rel, data in files.items():  # rel comes from our own walk: relative, no '..', no links
                target = tmp.joinpath(*rel.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
                try:
                    view = memoryview(data)
                    while view:  # os.write may write less than asked
                        view = view[os.write(fd, view):]
                    os.fsync(fd)  # the rename below must never publish a half-written file
                finally:
                    os.close(fd)
                os.chmod(target, 0o444)  # umask may have narrowed it; the sandbox uid must read it
            for d, _, _ in os.walk(tmp):
                os.chmod(d, 0o755)
            final.parent.mkdir(parents=True, exist_ok=True)
            if exists:  # a copy edited or truncated after registration: put a good one back in its place
                log.warning("stored files of bundle %s@%s did not match their digest; replacing them", name, digest)
                trash = Path(tempfile.mkdtemp(prefix="damaged-", dir=self._staging()))
                with contextlib.suppress(FileNotFoundError):  # a concurrent registration may have moved it
                    os.rename(final, trash)  # onto an empty folder: allowed, and atomic
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                return final, False  # lost a race to an identical registration: theirs is as good
            return final, True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _intact(self, path: Path, digest: str) -> bool:
        """Whether the stored copy still hashes to its digest (same walk and refusals as registration).

        Generous limits: a version registered before the operator lowered them (or before paths were
        capped) is still intact.
        """
        try:
            found = digest_dir(path, max_files=max(self.max_files, 100_000), max_bytes=max(self.max_bytes, 1 << 30),
                               max_path=1 << 16)
        except StockadeError:
            return False
        return found == digest

    async def delete(self, tenant_id: str | None, name: str) -> dict[str, Any]:
        """Delete the owner's bundle ``name`` (``None``: the platform's): its versions are retired, not
        erased. Runs already created keep the version they pinned (``get``; receipts keep naming its
        digest), new runs by the name get the platform bundle of that name if there is one (for a tenant
        bundle), else ``bundle.not_found``; registering the name again brings it back. The files stay on
        disk: they are content-addressed and runs may still be reading them.

        A tenant cannot delete a platform bundle (``auth.forbidden``: the operator removes its folder,
        then runs ``stockade bundle delete NAME --platform``).
        """
        _check_tenant(tenant_id)
        if not NAME_PATTERN.match(name):
            raise _not_found(name)
        retired = await self._store.retire(tenant_id, name)
        if not retired:
            if tenant_id is not None and await self._store.latest(None, name) is not None:
                raise StockadeError(
                    "auth.forbidden", f"{name!r} is a platform bundle, not one of this tenant's: only the operator "
                    "can remove it", bundle=name)
            raise _not_found(name)
        fallback = tenant_id is not None and await self._store.latest(None, name) is not None
        log.info("bundle %s of %s deleted (%d version(s) retired)", name, tenant_id or "the platform", retired)
        return {"name": name, "deleted": True, "versions": retired, "platform_fallback": fallback}

    # --- lookup
    def _version(self, rec: dict[str, Any], tenant_id: str | None) -> BundleVersion:
        try:
            manifest = BundleManifest.model_validate(rec["manifest"])
        except ValueError:  # pydantic's ValidationError: a stored row no registration of ours wrote
            raise StockadeError("bundle.invalid", f"the stored manifest of bundle {rec.get('name')!r} is not valid; "
                                                  "register the bundle again") from None
        digest = str(rec["digest"])
        return BundleVersion(
            manifest.name, str(rec.get("version", manifest.version)), digest, tenant_id,
            self._path(tenant_id, manifest.name, digest), manifest,
        )

    async def resolve(self, tenant_id: str | None, name: str) -> BundleVersion:
        """The current version of ``name``: the tenant's own wins over a platform bundle of that name."""
        _check_tenant(tenant_id)
        if not NAME_PATTERN.match(name):
            raise _not_found(name)
        for scope in ((tenant_id, None) if tenant_id is not None else (None,)):
            rec = await self._store.latest(scope, name)
            if rec is not None:
                return self._version(rec, scope)
        raise _not_found(name)

    async def get(self, tenant_id: str | None, name: str, digest: str) -> BundleVersion:
        """The exact version pinned at run creation (the tenant's, else the platform's).

        Also checks its files are on this node, since a worker is about to mount them.
        """
        _check_tenant(tenant_id)
        if not NAME_PATTERN.match(name) or not is_digest(digest):
            raise _not_found(name, digest)
        for scope in ((tenant_id, None) if tenant_id is not None else (None,)):
            rec = await self._store.get_version(scope, name, digest)
            if rec is not None:
                version = self._version(rec, scope)
                if not version.path.is_dir():
                    raise StockadeError(
                        "bundle.not_found", f"bundle {name}@{digest} is registered but its files are missing on "
                        "this node (the bundles data folder must be shared by every node)", bundle=name,
                    )
                if not await asyncio.to_thread(self._intact, version.path, digest):
                    log.error("stored files of bundle %s@%s do not match their digest", name, digest)
                    raise StockadeError(
                        "bundle.invalid", f"the stored files of bundle {name}@{digest} were changed after it was "
                        "registered; register the same content again to restore them", bundle=name,
                    )
                return version
        raise _not_found(name, digest)

    async def list(self, tenant_id: str) -> list[BundleVersion]:
        """Current version of every bundle the tenant sees: its own first, then the platform's, by name.

        A platform bundle shadowed by the tenant's own of the same name is still listed (after it).
        """
        _check_tenant(tenant_id)
        keys: set[tuple[str | None, str]] = set()
        for rec in await self._store.list(tenant_id):
            scope = rec.get("tenant_id")
            if scope in (tenant_id, None):
                keys.add((scope, str(rec["name"])))
        out: list[BundleVersion] = []
        for scope, name in sorted(keys, key=lambda k: (k[0] is None, k[1])):
            rec = await self._store.latest(scope, name)
            if rec is None:
                continue
            try:
                out.append(self._version(rec, scope))
            except StockadeError as exc:  # one unreadable row hides that bundle, not the whole list
                log.warning("bundle %r (%s) left out of the listing: %s", name, scope or "platform", exc.detail)
        return out
