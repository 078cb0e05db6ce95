"""A running node re-checks the deployment's receipt signing key (session 25).

Before: the key was checked only at start-up (session 23). After `stockade receipt adopt-key` ran for another
node's key (or another node moved the record in a rolling rotation), nodes already running kept signing receipts
with their old key and publishing their old public keys: a client verifying against the deployment's published
keys got receipts that verified or not depending on the node that served them, and nothing said why. Now a node
looks at the recorded key id again before it signs (at most every ``signing_watch.RECHECK_S``) and, while it is
not its own (nor its next), answers ``receipt.foreign_key`` (503) instead of a receipt, logged once.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from supervisor.audit import signing_watch
from supervisor.audit.keys import key_id
from supervisor.audit.receipts import verify_receipt
from supervisor.audit.signing_check import NAME, adopt_signing_key
from supervisor.errors import StockadeError
from tests.e2e.harness import idle_runs, start_node
from tests.e2e.test_signing_key_check_session23 import _cli, _key_file

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def recheck_now(monkeypatch):
    """Every signature re-reads the record (the documented interval is seconds: no test waits it out)."""
    monkeypatch.setattr(signing_watch, "RECHECK_S", 0.0)


async def _adopt_key_cli(settings: Any) -> tuple[int, dict[str, Any] | None, str]:
    """`stockade receipt adopt-key` run with ``settings``' own key file."""
    return await _cli(settings, "receipt", "adopt-key", key_file=True)


async def _receipt(node: Any, key: str, run_id: str) -> Any:
    return await node.client(key).get(f"/v1/runs/{run_id}/receipt")


def _published(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [k["pem"] for k in resp.json()["data"]]


async def test_a_running_node_stops_signing_once_another_nodes_key_is_adopted(node_config, tmp_path, recheck_now,
                                                                              caplog):
    a = await start_node(node_config, workers=False)
    try:
        tid, key = await a.tenant()
        (run_id,) = await idle_runs(a, tid, 1)
        first = await _receipt(a, key, run_id)
        assert first.status_code == 200, first.text
        assert first.json()["key_id"] == key_id(a.rt.signing_key)
        # node B of the same deployment, with a key of its own: the operator adopts it (the CLI, as documented)
        b_file = tmp_path / "b.pem"
        b_key = _key_file(b_file)
        b_config = node_config.model_copy(update={"signing_key_file": b_file})
        rc, out, err = await _adopt_key_cli(b_config)
        assert rc == 0, err
        assert out is not None and out["key_id"] == key_id(b_key) and out["replaced"] == key_id(a.rt.signing_key)
        b = await start_node(b_config, workers=False)  # B is the deployment's now: it starts and signs
        try:
            from_b = await _receipt(b, key, run_id)
            assert from_b.status_code == 200, from_b.text
            deployment_keys = _published(await b.client().get("/v1/receipts/public-keys"))
            assert verify_receipt(from_b.json(), deployment_keys)
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="stockade.signing"):
                for _ in range(3):  # A's key is foreign now: no receipt signed with it, the same answer each time
                    r = await _receipt(a, key, run_id)
                    assert r.status_code == 503, r.text  # before: 200, a receipt no published key verifies
                    body = r.json()
                    assert body["code"] == "receipt.foreign_key" and body["retryable"] is True
                    # the tenant is told to try again; what to do (the node's settings) is the operator's, logged
                    assert "STOCKADE_" not in body["detail"] and key_id(a.rt.signing_key) not in body["detail"]
                # nor does it publish its own keys as the deployment's
                for path in ("/v1/receipts/public-keys", "/v1/receipts/public-key"):
                    p = await a.client().get(path)
                    assert p.status_code == 503 and p.json()["code"] == "receipt.foreign_key", p.text
            refusals = [r for r in caplog.records if r.name == "stockade.signing" and r.levelno == logging.ERROR]
            assert len(refusals) == 1, [r.getMessage() for r in refusals]  # once per change, not per request
            logged = refusals[0].getMessage()
            assert key_id(b_key) in logged and key_id(a.rt.signing_key) in logged
            assert "STOCKADE_SIGNING_KEY_FILE" in logged and "restart" in logged.lower()
        finally:
            await b.stop()
    finally:
        await a.stop()


async def test_a_node_whose_key_is_the_deployments_keeps_signing_and_publishing(node_config, recheck_now):
    a = await start_node(node_config, workers=False)
    b = await start_node(node_config, workers=False)  # same key (the shared data dir's)
    try:
        tid, key = await a.tenant()
        (run_id,) = await idle_runs(a, tid, 1)
        rc, out, err = await _cli(node_config, "receipt", "adopt-key")  # run again: this very key, nothing moves
        assert rc == 0, err
        assert out is not None and out["changed"] is False
        for node in (a, b, a, b):
            r = await _receipt(node, key, run_id)
            assert r.status_code == 200, r.text
            assert verify_receipt(r.json(), _published(await node.client().get("/v1/receipts/public-keys")))
    finally:
        await b.stop()
        await a.stop()


async def test_a_refused_node_signs_again_once_the_record_names_its_key(node_config, tmp_path, recheck_now):
    a = await start_node(node_config, workers=False)
    try:
        tid, key = await a.tenant()
        (run_id,) = await idle_runs(a, tid, 1)
        audit = a.rt.services.audit
        mine = key_id(a.rt.signing_key)
        other = key_id(_key_file(tmp_path / "other.pem"))
        assert await adopt_signing_key(audit, other) == mine
        assert (await _receipt(a, key, run_id)).status_code == 503
        assert await adopt_signing_key(audit, mine) == other  # the operator adopts A's key back
        r = await _receipt(a, key, run_id)
        assert r.status_code == 200, r.text
        assert r.json()["key_id"] == mine
        assert verify_receipt(r.json(), _published(await a.client().get("/v1/receipts/public-keys")))
    finally:
        await a.stop()


async def test_a_node_on_pass_one_of_a_rolling_rotation_keeps_signing(node_config, tmp_path, recheck_now):
    """A node that announces the next key (pass 1) while another switches to it (pass 2) keeps signing with its
    current key, as its start-up check lets it: its list publishes both, and so does a switched node's."""
    new = tmp_path / "new.pem"
    new_key = _key_file(new)
    old = node_config.data_dir / "keys" / "receipt_ed25519.pem"
    a = await start_node(node_config.model_copy(update={"signing_key_file_next": new}), workers=False)
    try:
        tid, key = await a.tenant()
        (run_id,) = await idle_runs(a, tid, 1)
        b = await start_node(node_config.model_copy(update={"signing_key_file": new,
                                                            "signing_key_files_retired": (old,)}), workers=False)
        try:
            assert await a.rt.services.audit.deployment_key(NAME) == key_id(new_key)  # B rotated the deployment
            r = await _receipt(a, key, run_id)
            assert r.status_code == 200, r.text
            assert verify_receipt(r.json(), _published(await b.client().get("/v1/receipts/public-keys")))
        finally:
            await b.stop()
    finally:
        await a.stop()


async def test_a_node_whose_retired_key_is_recorded_again_neither_signs_nor_moves_the_record(
        node_config, tmp_path, recheck_now, caplog):
    """The record moved back to a key this node retired (adopt-key for it, or a node rotating back): a running node
    does not move it again (two such nodes would flip it every interval, and undo the operator's adopt-key)."""
    old = node_config.data_dir / "keys" / "receipt_ed25519.pem"
    new = tmp_path / "new.pem"
    _key_file(new)
    a = await start_node(node_config.model_copy(update={"signing_key_file": new, "signing_key_files_retired": (old,)}),
                         workers=False)
    try:
        tid, key = await a.tenant()
        (run_id,) = await idle_runs(a, tid, 1)
        audit = a.rt.services.audit
        old_id = key_id(a.rt.retired_signing_keys[0])
        await adopt_signing_key(audit, old_id)
        with caplog.at_level(logging.ERROR, logger="stockade.signing"):
            r = await _receipt(a, key, run_id)
        assert r.status_code == 503 and r.json()["code"] == "receipt.foreign_key", r.text
        assert any("retired" in x.getMessage() for x in caplog.records if x.name == "stockade.signing")
        assert await audit.deployment_key(NAME) == old_id  # the running node moved nothing
    finally:
        await a.stop()


async def test_the_record_is_read_once_per_interval(node_config, monkeypatch):
    """The hot path: within the interval a signature reads nothing; a change is seen once it has passed."""
    monkeypatch.setattr(signing_watch, "RECHECK_S", 3600.0)
    a = await start_node(node_config, workers=False)
    try:
        tid, key = await a.tenant()
        (run_id,) = await idle_runs(a, tid, 1)
        await adopt_signing_key(a.rt.services.audit, "0123456789abcdef")
        assert (await _receipt(a, key, run_id)).status_code == 200  # checked at start-up: not read again yet
        monkeypatch.setattr(signing_watch, "RECHECK_S", 0.0)  # the interval has passed
        assert (await _receipt(a, key, run_id)).status_code == 503
    finally:
        await a.stop()


class _FlakyAudit:
    """The one store method the watch reads, answering what a test says (a store error included)."""

    def __init__(self, recorded: str | None) -> None:
        self.recorded: str | None = recorded
        self.down = False
        self.reads = 0

    async def deployment_key(self, name: str) -> str | None:
        assert name == NAME
        self.reads += 1
        if self.down:
            raise StockadeError("audit.unavailable", "the database is away")
        return self.recorded


async def test_a_store_error_is_no_mismatch_and_signs_nothing_unverified(monkeypatch, caplog):
    monkeypatch.setattr(signing_watch, "RECHECK_S", 0.0)
    store = _FlakyAudit("a" * 16)
    watch = signing_watch.SigningWatch(store, "a" * 16, retired=[], next_id=None)
    await watch.may_sign()
    store.down = True
    with caplog.at_level(logging.WARNING, logger="stockade.signing"):
        with pytest.raises(StockadeError) as info:  # fail closed: no signature with a key not verified lately
            await watch.may_sign()
        assert info.value.code == "audit.unavailable"  # the store's own error, retryable: not a foreign key
        await watch.may_publish()  # publishing keeps the last verdict: the keys this node had verified
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    store.down = False
    await watch.may_sign()
    # a foreign key while the store is away afterwards: still refused for publishing (the last verdict)
    store.recorded = "b" * 16
    with pytest.raises(StockadeError, match="receipt.foreign_key"):
        await watch.may_sign()
    store.down = True
    with pytest.raises(StockadeError, match="receipt.foreign_key"):
        await watch.may_publish()
    with pytest.raises(StockadeError, match="audit.unavailable"):
        await watch.may_sign()


def test_the_interval_is_short() -> None:
    assert 5.0 <= signing_watch.RECHECK_S <= 30.0
