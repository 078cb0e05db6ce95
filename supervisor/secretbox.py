"""Secrets at rest: values the supervisor must send later (MCP server headers) are stored sealed.

AES-256-GCM under a key only the supervisor holds (``STOCKADE_SECRETS_KEY``,
shared by every process of a deployment; embedded: generated once into
``<data_dir>/keys/secrets.key``, mode 0600). Each value is bound to where it
belongs (its associated data: tenant, owner, name), so a database writer can
neither read a value nor move one to another tenant or header: it then fails
to open, with ``secret.unreadable``, and nothing is sent.

Sealed values are text: ``enc:v1:`` + base64url(nonce || ciphertext+tag).

Key rotation: ``STOCKADE_SECRETS_KEYS_RETIRED`` lists the keys used before;
values sealed under them still open (the current key is tried first), and
``reseal`` turns such a value into one sealed under the current key, after which
the retired key can be dropped. Nothing is ever sealed under a retired key.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from supervisor.audit.keys import generated_secret
from supervisor.errors import StockadeError
from supervisor.settings import Settings, SettingsError

__all__ = ["PREFIX", "SecretBox", "load_secrets_key", "load_secrets_keys", "load_secrets_next_key"]

PREFIX = "enc:v1:"


def _derive(raw: bytes) -> bytes:
    return hashlib.sha256(b"stockade secrets v1\x00" + raw).digest()  # any >= 16-char secret -> a 256-bit key


def load_secrets_key(settings: Settings) -> bytes:
    """The configured key, else the one generated into the data dir (created on first use)."""
    if settings.secrets_key is not None:
        raw = settings.secrets_key.get_secret_value().encode()
    else:
        raw = generated_secret(settings, "secrets.key")
    return _derive(raw)


def load_secrets_keys(settings: Settings) -> tuple[bytes, tuple[bytes, ...]]:
    """The current key and the retired ones (oldest first), as ``SecretBox`` takes them. A retired list
    holding the current key is a rotation half done (STOCKADE_SECRETS_KEY not set to a new secret)."""
    current = load_secrets_key(settings)
    retired = tuple(_derive(k.get_secret_value().encode()) for k in settings.secrets_keys_retired)
    if current in retired:
        raise SettingsError("invalid setting STOCKADE_SECRETS_KEYS_RETIRED: holds the current secrets key (to "
                            "rotate, set STOCKADE_SECRETS_KEY to a new secret)")
    return current, retired


def load_secrets_next_key(settings: Settings, current: bytes, retired: tuple[bytes, ...]) -> bytes | None:
    """``STOCKADE_SECRETS_KEY_NEXT`` (rolling rotation): values a node already on the new key sealed open
    here too; nothing is sealed with it here, nor re-sealed away from it."""
    if settings.secrets_key_next is None:
        return None
    nxt = _derive(settings.secrets_key_next.get_secret_value().encode())
    if nxt == current or nxt in retired:
        raise SettingsError("invalid setting STOCKADE_SECRETS_KEY_NEXT: is the current secrets key or a retired "
                            "one (it is the new key every node will seal with)")
    return nxt


class SecretBox:
    def __init__(self, key: bytes, retired: tuple[bytes, ...] | list[bytes] = (), next_key: bytes | None = None) -> None:
        if len(key) != 32 or any(len(k) != 32 for k in retired) or (next_key is not None and len(next_key) != 32):
            raise ValueError("the secrets key must be 32 bytes")
        self._aead = AESGCM(key)
        # what opens but does not seal: the next key (rolling rotation), then the retired ones newest first
        self._newer = () if next_key is None else (AESGCM(next_key),)
        self._older = tuple(AESGCM(k) for k in reversed(tuple(retired)))

    def seal(self, value: str, bound_to: str) -> str:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, value.encode("utf-8"), bound_to.encode("utf-8"))
        return PREFIX + base64.urlsafe_b64encode(nonce + ct).decode("ascii")

    @staticmethod
    def is_sealed(value: object) -> bool:
        return isinstance(value, str) and value.startswith(PREFIX)

    def open(self, token: str, bound_to: str) -> str:
        return self._open(token, bound_to)[0]

    def reseal(self, token: str, bound_to: str) -> str | None:
        """``token`` sealed anew under the current key if a retired key sealed it; None if the current key
        did, or the next one (nothing to do: never back to an older key). ``secret.unreadable`` if no key
        opens it."""
        value, older = self._open(token, bound_to)
        return self.seal(value, bound_to) if older else None

    def _open(self, token: str, bound_to: str) -> tuple[str, bool]:
        """The value, and whether a retired key sealed it."""
        try:
            blob = base64.urlsafe_b64decode(token[len(PREFIX):].encode("ascii"))
            nonce, ct, aad = blob[:12], blob[12:], bound_to.encode("utf-8")
            newer = 1 + len(self._newer)
            for i, aead in enumerate((self._aead, *self._newer, *self._older)):
                try:
                    return aead.decrypt(nonce, ct, aad).decode("utf-8"), i >= newer
                except InvalidTag:
                    continue
        except (ValueError, UnicodeError):
            pass
        raise StockadeError(
            "secret.unreadable", "a stored secret cannot be opened (other key, or moved/changed in the database)"
        )
