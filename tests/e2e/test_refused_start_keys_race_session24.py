"""A refused start removes the keys it generated - and only those (session 24).

Before: ``open_runtime`` listed ``<data_dir>/keys`` when it began and, refused, removed every file there that
was not in that listing. Two nodes starting at once on one data dir (one shared volume, replicas), one of them
misconfigured (a STOCKADE_SIGNING_KEY_FILE that is not the deployment's): the refused one removed the audit,
secrets and signing keys the other had just generated and was running with - its next start made new ones,
and every record it had sealed read as forged.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import supervisor.runtime as runtime_mod
from supervisor.settings import SettingsError

pytestmark = pytest.mark.timeout(120)


def _key_file(path: Path) -> None:
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)


@pytest.mark.parametrize("stack_kind", ["embedded"])
async def test_a_refused_start_keeps_the_keys_a_node_starting_at_the_same_moment_made(node_config, monkeypatch):
    own = Path(tempfile.mkdtemp(prefix="stockade-test-race-"))
    os.chmod(own, 0o711)
    other = own / "other.pem"
    _key_file(other)
    running = node_config.model_copy(update={"data_dir": own, "audit_key": None, "secrets_key": None})
    refused = running.model_copy(update={"signing_key_file": other})
    listed, first_done = asyncio.Event(), asyncio.Event()
    original = runtime_mod.open_services

    async def open_services(settings, **kw):  # noqa: ANN001, ANN003, ANN202
        if settings is refused:  # it has listed the keys dir (before opening the stores): the other node starts now
            listed.set()
            await first_done.wait()
        return await original(settings, **kw)

    monkeypatch.setattr(runtime_mod, "open_services", open_services)
    late = asyncio.create_task(runtime_mod.open_runtime(refused))
    await listed.wait()
    rt = await runtime_mod.open_runtime(running)  # generates audit.key, secrets.key, receipt_ed25519.pem
    try:
        made = sorted(p.name for p in (own / "keys").iterdir())
        first_done.set()
        with pytest.raises(SettingsError, match="STOCKADE_SIGNING_KEY_FILE"):
            await late
        assert sorted(p.name for p in (own / "keys").iterdir()) == made  # before: the refused start removed them
    finally:
        await rt.stop()
