"""Secrets at rest: values the supervisor must send later (MCP server headers) are stored sealed.

AES-256-GCM under a key only the supervisor holds (``STOCKADE_SECRETS_KEY``,
shared by every process of a deployment; embedded: generated once into
``<data_dir>/keys/secrets.key``, mode 0600). Each value is bound to where it
belongs (its associated data: tenant, owner, name), so a database writer can
neither read a value nor move one to another tenant or header: it then fails
to open, with ``secret.unreadable``, and nothing is sent.

Sealed values are text: ``enc:v1:`` + base64url(nonce || ciphertext+tag).
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from supervisor.audit.keys import generated_secret
from supervisor.errors import StockadeError
from supervisor.settings import Settings

__all__ = ["PREFIX", "SecretBox", "load_secrets_key"]

PREFIX = "enc:v1:"


def load_secrets_key(settings: Settings) -> bytes:
    """The configured key, else the one generated into the data dir (created on first use)."""
    if settings.secrets_key is not None:
        raw = settings.secrets_key.get_secret_value().encode()
    else:
        raw = generated_secret(settings, "secrets.key")
    return hashlib.sha256(b"stockade secrets v1\x00" + raw).digest()  # any >= 16-char secret -> a 256-bit key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the secrets key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, value: str, bound_to: str) -> str:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, value.encode("utf-8"), bound_to.encode("utf-8"))
        return PREFIX + base64.urlsafe_b64encode(nonce + ct).decode("ascii")

    @staticmethod
    def is_sealed(value: object) -> bool:
        return isinstance(value, str) and value.startswith(PREFIX)

    def open(self, token: str, bound_to: str) -> str:
        try:
            blob = base64.urlsafe_b64decode(token[len(PREFIX):].encode("ascii"))
            return self._aead.decrypt(blob[:12], blob[12:], bound_to.encode("utf-8")).decode("utf-8")
        except (InvalidTag, ValueError, UnicodeError):
            raise StockadeError(
                "secret.unreadable", "a stored secret cannot be opened (other key, or moved/changed in the database)"
            ) from None
