"""Where the audit MAC key and the receipt signing key come from.

Production: ``STOCKADE_AUDIT_KEY`` and ``STOCKADE_SIGNING_KEY_FILE`` shared by
every worker (a configured key file must exist: it is never generated). Embedded:
generated once into ``<data_dir>/keys`` (mode 0600).
Rotation: the keys used before (``STOCKADE_AUDIT_KEYS_RETIRED``,
``STOCKADE_SIGNING_KEY_FILES_RETIRED``) still verify what they made; nothing new
is made with them. A rolling rotation first hands every node the new key as
``..._NEXT`` (verifies, published; the audit key seals once another node did).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from supervisor.settings import Settings, SettingsError

__all__ = ["generated_here", "generated_secret", "key_id", "load_audit_key", "load_audit_keys", "load_audit_next_key",
           "load_next_signing_key", "load_retired_signing_keys", "load_signing_key", "public_key_pem"]


# the key files this start made (``generated_here``): a refused start removes those and no other - not the ones
# another process starting on the same data dir at the same moment made, and is running with
_made: ContextVar[list[Path] | None] = ContextVar("stockade_keys_made", default=None)


@contextmanager
def generated_here() -> Iterator[list[Path]]:
    """The key files generated inside this block (by this task: a concurrent start's are not in it)."""
    made: list[Path] = []
    token = _made.set(made)
    try:
        yield made
    finally:
        _made.reset(token)


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
        if (made := _made.get()) is not None:
            made.append(path)
    finally:
        os.unlink(tmp)


# the setting a generated file stands in for (named in the one-line start-up error)
_SETTING = {"audit.key": "STOCKADE_AUDIT_KEY", "secrets.key": "STOCKADE_SECRETS_KEY"}
_MIN_SECRET = 16  # as a configured key (supervisor/settings.py)
_MAX_PEM = 64 * 1024  # a key file is a few hundred bytes: never read a stray huge file whole


def _read_private(path: Path, setting: str) -> bytes:
    """A key file in the data dir, refused (one line) unless only its owner can read it.

    A copy restored with 0644, or a file someone chmod'ed, hands the key to every local user; as ssh does
    with private keys, it is refused rather than used. So is one owned by another account (neither this
    process's user nor root): that account can read it, and replace it with a key of its own.
    """
    try:
        # O_NONBLOCK: a FIFO put in the key's place is refused below, not waited on for ever
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SettingsError(f"invalid setting {setting}: unset, and its file {path} is not a regular file")
            if st.st_mode & 0o077:
                raise SettingsError(f"invalid setting {setting}: unset, and its file {path} is open to other users "
                                    f"(mode {st.st_mode & 0o777:04o}); chmod 600 it")
            if st.st_uid not in (os.geteuid(), 0):
                raise SettingsError(f"invalid setting {setting}: unset, and its file {path} belongs to another "
                                    f"user (uid {st.st_uid}, not {os.geteuid()}); chown it to the user that runs "
                                    "stockade")
            return f.read()
    except OSError as exc:
        raise SettingsError(f"invalid setting {setting}: unset, and its file {path} cannot be read: "
                            f"{exc.strerror or exc}") from None


def generated_secret(settings: Settings, name: str) -> bytes:
    """``<data_dir>/keys/<name>``: a random secret made on first use (by whichever process comes first)."""
    path = settings.data_dir / "keys" / name
    if not path.exists():
        try:
            _write_secret(path, secrets.token_hex(32).encode())
        except FileExistsError:
            pass  # another process made it first
    setting = _SETTING.get(name, "STOCKADE_DATA_DIR")
    raw = _read_private(path, setting).strip()
    if len(raw) < _MIN_SECRET:
        # an empty secrets.key (a touched or truncated file) sealed every MCP credential under a key anyone
        # can derive; an empty audit.key MAC'd the chain under no key
        raise SettingsError(f"invalid setting {setting}: unset, and its file {path} holds no key (fewer than "
                            f"{_MIN_SECRET} characters); restore it from a backup")
    return raw


def load_audit_key(settings: Settings) -> bytes:
    if settings.audit_key is not None:
        return settings.audit_key.get_secret_value().encode()
    return generated_secret(settings, "audit.key")


def load_audit_keys(settings: Settings) -> tuple[bytes, tuple[bytes, ...]]:
    """The current audit key and the retired ones (oldest first), as ``Sealer`` takes them.

    A retired list holding the current key is refused: that is a rotation half done (the old key moved to
    the retired list, STOCKADE_AUDIT_KEY not set to a new one, so the generated file is still current)."""
    current = load_audit_key(settings)
    retired = tuple(k.get_secret_value().encode() for k in settings.audit_keys_retired)
    if current in retired:
        raise SettingsError("invalid setting STOCKADE_AUDIT_KEYS_RETIRED: holds the current audit key (to rotate, "
                            "set STOCKADE_AUDIT_KEY to a new secret)")
    return current, retired


def load_audit_next_key(settings: Settings, current: bytes, retired: tuple[bytes, ...]) -> bytes | None:
    """``STOCKADE_AUDIT_KEY_NEXT`` (rolling rotation), refused if it is the current key or a retired one."""
    if settings.audit_key_next is None:
        return None
    nxt = settings.audit_key_next.get_secret_value().encode()
    if nxt == current or nxt in retired:
        raise SettingsError("invalid setting STOCKADE_AUDIT_KEY_NEXT: is the current audit key or a retired one "
                            "(it is the new key every node will seal with)")
    return nxt


def _read_pem(path: Path, setting: str) -> bytes:
    """A PEM key file named by a setting, read whole (refused: not a regular file, unreadable)."""
    bad = f"invalid setting {setting}: {path}"
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SettingsError(f"{bad} is not a regular file")
            return f.read(_MAX_PEM + 1)
    except OSError as exc:
        raise SettingsError(f"{bad} cannot be read: {exc.strerror or exc}") from None


def _pem_public_key(path: Path, setting: str) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file a setting names (a public key, or an unencrypted private one)."""
    data = _read_pem(path, setting)
    if len(data) <= _MAX_PEM:
        for load in (lambda d: serialization.load_pem_private_key(d, password=None).public_key(),
                     serialization.load_pem_public_key):
            try:
                key = load(data)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue
            if isinstance(key, Ed25519PublicKey):
                return key
            break
    raise SettingsError(f"invalid setting {setting}: {path} is not an Ed25519 PEM key (public, or unencrypted private)")


def load_signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The receipt signing key: ``STOCKADE_SIGNING_KEY_FILE``, else ``<data_dir>/keys/receipt_ed25519.pem``,
    generated there on first use. Only the default is generated: a configured file that is missing (a typo, a
    secret not mounted) was created with a new key, and receipts were signed with a key nobody planned (one
    per replica)."""
    configured = settings.signing_key_file
    path = configured or settings.data_dir / "keys" / "receipt_ed25519.pem"
    bad = f"invalid setting STOCKADE_SIGNING_KEY_FILE: {path}"
    if configured is not None:
        if not os.path.lexists(path):
            raise SettingsError(f"{bad} does not exist (point it at an Ed25519 PEM private key, or unset it to use "
                                "the key generated in <data_dir>/keys)")
        # a configured file is the operator's to protect (a mounted secret is often 0644 inside a private mount)
        data = _read_pem(path, "STOCKADE_SIGNING_KEY_FILE")
    else:
        try:
            if not path.exists():
                pem = Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                try:
                    _write_secret(path, pem)
                except FileExistsError:
                    pass
        except OSError as exc:
            raise SettingsError(f"{bad} cannot be read: {exc.strerror or exc}") from None
        data = _read_private(path, "STOCKADE_SIGNING_KEY_FILE")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: an encrypted key (we hold no password)
        raise SettingsError(f"{bad} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SettingsError(f"{bad} is not an Ed25519 private key")
    return key


def load_retired_signing_keys(settings: Settings, current: Ed25519PrivateKey) -> list[Ed25519PublicKey]:
    """The public halves of ``STOCKADE_SIGNING_KEY_FILES_RETIRED`` (oldest first): receipts they signed still
    verify (``GET /v1/receipts/public-keys``); nothing is signed with them. A public-key PEM is enough, and is
    what to keep: the private half of a retired key has no use left."""
    out: list[Ed25519PublicKey] = []
    seen = {key_id(current.public_key())}
    for path in settings.signing_key_files_retired:
        key = _pem_public_key(path, "STOCKADE_SIGNING_KEY_FILES_RETIRED")
        kid = key_id(key)
        if kid in seen:
            raise SettingsError(f"invalid setting STOCKADE_SIGNING_KEY_FILES_RETIRED: {path} is the current signing "
                                f"key or listed twice (key id {kid})")
        seen.add(kid)
        out.append(key)
    return out


def load_next_signing_key(settings: Settings, current: Ed25519PrivateKey,
                          retired: list[Ed25519PublicKey]) -> Ed25519PublicKey | None:
    """``STOCKADE_SIGNING_KEY_FILE_NEXT`` (rolling rotation): published with the others, signs nothing here.
    Its public half is enough; refused if it is the current key or a retired one."""
    path = settings.signing_key_file_next
    if path is None:
        return None
    key = _pem_public_key(path, "STOCKADE_SIGNING_KEY_FILE_NEXT")
    kid = key_id(key)
    if kid in {key_id(current), *(key_id(k) for k in retired)}:
        raise SettingsError(f"invalid setting STOCKADE_SIGNING_KEY_FILE_NEXT: {path} is the current signing key "
                            f"or a retired one (key id {kid})")
    return key


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A receipt's ``key_id``: the first 16 hex digits of sha256 over the raw 32-byte public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(pub.public_bytes_raw()).hexdigest()[:16]


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
