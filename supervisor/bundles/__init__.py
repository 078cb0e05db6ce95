"""Bundle registry: manifests, hostile-archive extraction, content-hashed immutable versions, hot-loading."""

from supervisor.bundles.archive import extract_archive, sniff_archive
from supervisor.bundles.digest import digest_dir, digest_files, is_digest, is_ignored
from supervisor.bundles.manifest import (
    BundleLimits,
    BundleManifest,
    check_entrypoint,
    parse_manifest,
    validate_bundle_files,
)
from supervisor.bundles.registry import PLATFORM_SCOPE, BundleRegistry, BundleVersion
from supervisor.bundles.watcher import load_bundles_dir, watch_bundles_dir

__all__ = [
    "PLATFORM_SCOPE", "BundleLimits", "BundleManifest", "BundleRegistry", "BundleVersion", "check_entrypoint",
    "digest_dir", "digest_files", "extract_archive", "is_digest", "is_ignored", "load_bundles_dir",
    "parse_manifest", "sniff_archive", "validate_bundle_files", "watch_bundles_dir",
]
