"""Where the audit MAC key and the receipt signing key come from.

Production: ``STOCKADE_AUDIT_KEY`` and ``STOCKADE_SIGNING_KEY_FILE`` shared by
every worker. Embedded: generated once into ``<data_dir>/keys`` (mode 0600).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from supervisor.settings import Settings

__all__ = ["generated_secret", "load_audit_key", "load_signing_key", "public_key_pem"]


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` (0600) holding ``data``, atomically: FileExistsError if it exists already.

    Written to a private temporary name first and then hard-linked into place, so a process
    that finds the file (several replicas starting at once) never reads it half-written.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails with FileExistsError if another process won
    finally:
        os.unlink(tmp)


def generated_secret(settings: Settings, name: str) -> bytes:
    """``<data_dir>/keys/<name>``: a random secret made on first use (by whichever process comes first)."""
    path = settings.data_dir / "keys" / name
    if not path.exists():
        try:
            _write_secret(path, secrets.token_hex(32).encode())
        except FileExistsError:
            pass  # another process made it first
    return path.read_bytes().strip()


def load_audit_key(settings: Settings) -> bytes:
    if settings.audit_key is not None:
        return settings.audit_key.get_secret_value().encode()
    return generated_secret(settings, "audit.key")


def load_signing_key(settings: Settings) -> Ed25519PrivateKey:
    path = settings.signing_key_file or settings.data_dir / "keys" / "receipt_ed25519.pem"
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            _write_secret(path, pem)
        except FileExistsError:
            pass
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_key_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
