"""Nodes of one deployment sign receipts with one key (session 23).

Before: a node with a data dir of its own and no STOCKADE_SIGNING_KEY_FILE generated a signing key of its own
and started. Its receipts verified against no other node's published keys - a client's receipt checked out or
not depending on the node it asked - and nothing said why. Now the database records the deployment's key id and
`serve`/`api` refuse a key that is not it (nor names it as next or retired); `stockade receipt adopt-key` is the
way out for a key lost for good, and a CLI command signs nothing, so it records nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from supervisor.audit.keys import key_id
from supervisor.audit.signing_check import NAME
from supervisor.settings import SettingsError
from tests.e2e.harness import ROOT, start_node

pytestmark = pytest.mark.timeout(180)


def _own_data_dir() -> Path:
    """A data dir with no key in it (harness.make_data_dir gives the test process's shared one)."""
    d = Path(tempfile.mkdtemp(prefix="stockade-test-own-"))
    os.chmod(d, 0o711)
    return d


def _key_file(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return key


async def _cli(settings: Any, *argv: str, key_file: bool = False) -> tuple[int, dict[str, Any] | None, str]:
    """``stockade *argv`` on ``settings``' stores and keys; ``key_file``: with its STOCKADE_SIGNING_KEY_FILE too
    (else the CLI signs with the data dir's key)."""
    env = {"PATH": "/usr/bin:/bin", "STOCKADE_DATA_DIR": str(settings.data_dir),
           "STOCKADE_BUNDLES_DIR": str(settings.bundles_dir),
           "STOCKADE_AUDIT_KEY": settings.audit_key.get_secret_value(),
           "STOCKADE_SECRETS_KEY": settings.secrets_key.get_secret_value()}
    if key_file:
        env["STOCKADE_SIGNING_KEY_FILE"] = str(settings.signing_key_file)
    if settings.uses_postgres:
        env.update({"STOCKADE_DATABASE_URL": settings.database_url, "STOCKADE_REDIS_URL": settings.redis_url,
                    "STOCKADE_REDIS_PREFIX": settings.redis_prefix})
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", *argv, env=env, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    lines = out.decode().strip().splitlines()
    return proc.returncode or 0, json.loads(lines[-1]) if lines else None, err.decode()


async def _recorded(node: Any) -> str | None:
    return await node.rt.services.audit.deployment_key(NAME)


@pytest.mark.parametrize("stack_kind", ["production"])  # nodes with data dirs of their own share PostgreSQL
async def test_a_node_with_a_generated_key_of_its_own_is_refused_and_keeps_no_key(node_config):
    a = await start_node(node_config)
    own = _own_data_dir()
    try:
        assert await _recorded(a) == key_id(a.rt.signing_key)
        with pytest.raises(SettingsError) as info:
            await start_node(node_config.model_copy(update={"data_dir": own}), workers=False)
        msg = str(info.value)
        assert msg.startswith("invalid setting STOCKADE_SIGNING_KEY_FILE:") and key_id(a.rt.signing_key) in msg
        assert not (own / "keys" / "receipt_ed25519.pem").exists()  # the refused start kept no key of its own
        assert await _recorded(a) == key_id(a.rt.signing_key)  # and moved nothing
        # given the deployment's key file, the same node starts, and signs as the others do
        shared = node_config.data_dir / "keys" / "receipt_ed25519.pem"
        b = await start_node(node_config.model_copy(update={"data_dir": own, "signing_key_file": shared}),
                             workers=False)
        try:
            pub_a = (await a.client().get("/v1/receipts/public-key")).text
            assert (await b.client().get("/v1/receipts/public-key")).text == pub_a
        finally:
            await b.stop()
    finally:
        await a.stop()
        shutil.rmtree(own, ignore_errors=True)


@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_node_left_out_of_a_rotation_is_refused_and_one_in_it_starts(node_config, tmp_path):
    a = await start_node(node_config, workers=False)
    old = node_config.data_dir / "keys" / "receipt_ed25519.pem"
    new = tmp_path / "new.pem"
    new_key = _key_file(new)
    try:
        rotated = node_config.model_copy(update={"signing_key_file": new, "signing_key_files_retired": (old,)})
        b = await start_node(rotated, workers=False)  # pass 2 on B: the deployment's key is now the new one
        await b.stop()
        assert await _recorded(a) == key_id(new_key)
        announced = node_config.model_copy(update={"signing_key_file_next": new})
        c = await start_node(announced, workers=False)  # a node still on pass 1 (it knows the new key): starts
        await c.stop()
        with pytest.raises(SettingsError, match="STOCKADE_SIGNING_KEY_FILE"):  # one that knows only the old key
            await start_node(node_config, workers=False)
        assert await _recorded(a) == key_id(new_key)
    finally:
        await a.stop()


async def test_a_lost_key_is_refused_until_the_operator_adopts_the_new_one(node_config):
    keeper = await start_node(node_config, workers=False)  # holds the data dir (the last node's stop removes it)
    try:
        first = key_id(keeper.rt.signing_key)
        (node_config.data_dir / "keys" / "receipt_ed25519.pem").unlink()  # the key is lost
        with pytest.raises(SettingsError, match="stockade receipt adopt-key"):
            await start_node(node_config, workers=False)
        assert not (node_config.data_dir / "keys" / "receipt_ed25519.pem").exists()
        rc, out, err = await _cli(node_config, "receipt", "adopt-key")
        assert rc == 0, err
        assert out is not None and out["replaced"] == first and out["key_id"] != first
        node = await start_node(node_config, workers=False)
        try:
            assert key_id(node.rt.signing_key) == out["key_id"] == await _recorded(node)
        finally:
            await node.stop()
    finally:
        await keeper.stop()


@pytest.mark.parametrize("stack_kind", ["production"])
async def test_a_cli_command_with_a_data_dir_of_its_own_records_no_key(node_config):
    own = _own_data_dir()
    try:
        rc, _, err = await _cli(node_config.model_copy(update={"data_dir": own}), "migrate")
        assert rc == 0, err
        a = await start_node(node_config, workers=False)  # the first node to serve: its key is the deployment's
        try:
            assert await _recorded(a) == key_id(a.rt.signing_key)
            rc, _, err = await _cli(node_config.model_copy(update={"data_dir": own}), "tenant", "list")
            assert rc == 0, err
            assert await _recorded(a) == key_id(a.rt.signing_key)
        finally:
            await a.stop()
    finally:
        shutil.rmtree(own, ignore_errors=True)
