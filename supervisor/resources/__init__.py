"""Resolved resources: what a tool will really touch, in the one canonical form the policy matches.

``url`` (normalised http(s) URLs), ``addresses`` (IP spellings and forbidden
egress targets), ``paths`` (storage keys resolved inside a root). Pure: no
DNS, no sockets; ``paths`` reads the file system only to follow symlinks.
"""

from supervisor.resources.addresses import embedded_ipv4, is_forbidden, parse_host_ip, parse_networks
from supervisor.resources.paths import resolve_storage_path, split_storage_key, storage_resource
from supervisor.resources.url import NormalizedUrl, normalize_url

__all__ = [
    "NormalizedUrl", "embedded_ipv4", "is_forbidden", "normalize_url", "parse_host_ip", "parse_networks",
    "resolve_storage_path", "split_storage_key", "storage_resource",
]
