"""The deployment's receipt signing key, as the store records it (supervisor/audit/signing_check.py), on both SQL
stores: who may sign, who moves the record, and two nodes starting at once."""

from __future__ import annotations

import asyncio

import pytest

from supervisor.audit.signing_check import NAME, adopt_signing_key, check_signing_key
from tests.contract._helpers import store

pytestmark = pytest.mark.timeout(60)

OLD, NEW, OTHER = "a" * 16, "b" * 16, "c" * 16


async def test_the_first_node_records_its_key_and_the_same_key_passes(sql_db):
    audit = store(sql_db, "AuditLog")
    assert await audit.deployment_key(NAME) is None
    assert await check_signing_key(audit, OLD, [], None) is None
    assert await audit.deployment_key(NAME) == OLD
    assert await check_signing_key(audit, OLD, [], NEW) is None  # pass 1 of a rotation: nothing moves
    assert await audit.deployment_key(NAME) == OLD


async def test_a_key_of_its_own_is_refused_and_changes_nothing(sql_db):
    audit = store(sql_db, "AuditLog")
    assert await check_signing_key(audit, OLD, [], None) is None
    problem = await check_signing_key(audit, OTHER, [], None)
    assert problem is not None and problem.startswith("invalid setting STOCKADE_SIGNING_KEY_FILE:")
    assert OLD in problem and OTHER in problem and "stockade receipt adopt-key" in problem
    assert await audit.deployment_key(NAME) == OLD
    # naming the deployment's key as anything but retired or next changes nothing either
    assert await check_signing_key(audit, OTHER, [NEW], OTHER) is not None
    assert await audit.deployment_key(NAME) == OLD


async def test_a_rolling_rotation_moves_the_record_forward_only(sql_db):
    audit = store(sql_db, "AuditLog")
    assert await check_signing_key(audit, OLD, [], None) is None
    assert await check_signing_key(audit, OLD, [], NEW) is None  # pass 1 on a node: announces NEW
    assert await check_signing_key(audit, NEW, [OLD], None) is None  # pass 2 on another: NEW is the deployment's
    assert await audit.deployment_key(NAME) == NEW
    assert await check_signing_key(audit, OLD, [], NEW) is None  # a pass-1 node restarting meanwhile: fine
    assert await audit.deployment_key(NAME) == NEW  # ... and it did not move the record back
    problem = await check_signing_key(audit, OLD, [], None)  # a node left out of the rotation: refused
    assert problem is not None and NEW in problem


async def test_two_nodes_starting_at_once_on_an_empty_record_one_key_wins(sql_db):
    audit = store(sql_db, "AuditLog")
    other = await sql_db.reopen()
    try:
        second = store(sql_db, "AuditLog", other)
        results = await asyncio.gather(check_signing_key(audit, OLD, [], None), check_signing_key(second, OTHER, [], None))
        assert sorted(r is None for r in results) == [False, True], results
        winner = await audit.deployment_key(NAME)
        assert winner in (OLD, OTHER) and (results[0] is None) == (winner == OLD)
    finally:
        await other.close()


async def test_two_nodes_rotating_at_once_from_the_same_retired_key_one_moves_it(sql_db):
    audit = store(sql_db, "AuditLog")
    assert await check_signing_key(audit, OLD, [], None) is None
    other = await sql_db.reopen()
    try:
        second = store(sql_db, "AuditLog", other)
        # both switched to NEW (the same rotation), one after the other's compare-and-set: both pass
        results = await asyncio.gather(check_signing_key(audit, NEW, [OLD], None),
                                       check_signing_key(second, NEW, [OLD], None))
        assert results == [None, None]
        assert await audit.deployment_key(NAME) == NEW
        # a stale compare-and-set changes nothing: the record is no longer OLD
        assert await audit.claim_deployment_key(NAME, OTHER, replaces=OLD) == NEW
        assert await audit.claim_deployment_key(NAME, OTHER, replaces=None) == NEW
    finally:
        await other.close()


async def test_adopting_records_this_nodes_key_whatever_was_recorded(sql_db):
    audit = store(sql_db, "AuditLog")
    assert await adopt_signing_key(audit, OLD) is None
    assert await adopt_signing_key(audit, OTHER) == OLD
    assert await audit.deployment_key(NAME) == OTHER
    assert await adopt_signing_key(audit, OTHER) == OTHER
    assert await check_signing_key(audit, OTHER, [], None) is None
