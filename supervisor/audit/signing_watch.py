"""While a node runs: is its receipt signing key still the deployment's?

The start-up check (supervisor/audit/signing_check.py) compares a node's keys with the recorded deployment key
once. The record moves while nodes run - ``stockade receipt adopt-key`` for another node's key, another node's
pass 2 of a rolling rotation - and nodes already running kept signing with their old key and publishing their
old public keys: a receipt verified or not against the deployment's published keys depending on the node that
served it, and nothing said why. So a node reads the record again before it signs a receipt or publishes its
keys, at most every ``RECHECK_S`` (the hot path is one comparison in between), and judges as at start-up:

- its current key, or none recorded: it signs (nothing recorded is nothing to disagree with; the next node to
  start records its key);
- its ``STOCKADE_SIGNING_KEY_FILE_NEXT``: it signs - a node on pass 1 of a rolling rotation while another is on
  pass 2; it publishes that key, and the switched nodes publish its current one as retired;
- one of its retired keys: the record moved back after this node started (adopt-key for that key, or a node
  rotating back). At start-up that is a rotation and the node moves the record to its key; a running node moves
  nothing: it would undo the operator's adopt-key within seconds, and two running nodes each holding the other's
  key as retired would flip the record every interval. It signs nothing until restarted (or the record names its
  key again);
- anything else: it signs and publishes nothing, ``receipt.foreign_key`` (503), logged once per change.

A store error while reading the record is no verdict on the key: signing fails closed with the store's own error
(``audit.unavailable``, retryable; a receipt needs the store anyway, and no receipt is signed with a key not
verified within ``RECHECK_S``), while publishing keeps the last verdict (a key list is no new signature, and the
endpoint did not need the store before).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from supervisor.audit.signing_check import NAME, shown_key_id
from supervisor.errors import Outage, StockadeError
from supervisor.stores.ports import AuditLog

__all__ = ["RECHECK_S", "SigningWatch", "running_verdict"]

log = logging.getLogger("stockade.signing")

# Seconds a verdict on the recorded key is trusted: a record moved is seen by every running node within this,
# while signatures in between read nothing. Read at each check (a test may set it).
RECHECK_S = 10.0


def running_verdict(recorded: str | None, current: str, retired: Iterable[str], next_id: str | None) -> str | None:
    """None when a running node whose key is ``current`` may sign with the record at ``recorded``, else why not
    (the operator's message)."""
    if recorded is None or recorded == current or recorded == next_id:
        return None
    shown = shown_key_id(recorded)
    if recorded in set(retired):
        return (f"the deployment signs receipts with key {shown}, which this node lists as retired "
                f"(STOCKADE_SIGNING_KEY_FILES_RETIRED) while it signs with key {current}: the record was moved back "
                "after this node started (`stockade receipt adopt-key`, or a node rotating back), and a running node "
                "does not move it again. Restart this node with the deployment's key as STOCKADE_SIGNING_KEY_FILE "
                "(restarted as it is, it rotates the deployment to its key again)")
    return (f"this node signs receipts with key {current}, and the deployment now signs with key {shown} (recorded "
            "after this node started: `stockade receipt adopt-key`, or another node's rotation), which neither its "
            "STOCKADE_SIGNING_KEY_FILE_NEXT nor its STOCKADE_SIGNING_KEY_FILES_RETIRED names: receipts it signed "
            "would verify against no other node's published keys. Restart this node with the deployment's key as "
            "STOCKADE_SIGNING_KEY_FILE (or one shared STOCKADE_DATA_DIR); it signs again, unrestarted, once the "
            "record names its key")


class SigningWatch:
    """One per node that signs receipts (``Runtime.signing_watch``); made right after the start-up check passed,
    so the first verdict is that check's."""

    def __init__(self, audit: AuditLog, current: str, retired: Iterable[str], next_id: str | None) -> None:
        self._audit, self._current, self._retired, self._next = audit, current, frozenset(retired), next_id
        self._problem: str | None = None  # the last verdict: None signs
        self._checked = time.monotonic()  # when the record was last read (the start-up check, first)
        self._failed: float | None = None  # when a read last failed (publishing does not retry before RECHECK_S)
        self._lock = asyncio.Lock()  # one read at a time: requests arriving together share it
        self._outage = Outage(log, "reading the deployment's receipt signing key")

    async def may_sign(self) -> None:
        """Raise unless this node may sign a receipt now: ``receipt.foreign_key``, or the store's error."""
        self._raise(await self._verdict(strict=True))

    async def may_publish(self) -> None:
        """Raise ``receipt.foreign_key`` unless this node's keys are the deployment's, as last known."""
        self._raise(await self._verdict(strict=False))

    @staticmethod
    def _raise(problem: str | None) -> None:
        if problem is not None:
            raise StockadeError("receipt.foreign_key", problem)

    def _fresh(self, since: float | None) -> bool:
        return since is not None and time.monotonic() - since < RECHECK_S

    async def _verdict(self, *, strict: bool) -> str | None:
        if self._fresh(self._checked) or (not strict and self._fresh(self._failed)):
            return self._problem
        async with self._lock:
            if self._fresh(self._checked):  # another request read it while this one waited
                return self._problem
            try:
                recorded = await self._audit.deployment_key(NAME)
            except StockadeError:
                self._failed = time.monotonic()
                self._outage.failed("cannot read the deployment's receipt signing key")
                if strict:
                    raise  # fail closed: nothing is signed with a key not verified within RECHECK_S
                return self._problem
            self._outage.ok()
            self._checked, self._failed = time.monotonic(), None
            self._judged(running_verdict(recorded, self._current, self._retired, self._next))
            return self._problem

    def _judged(self, problem: str | None) -> None:
        """Keep the verdict; log it when it changes (not at each request)."""
        if problem != self._problem:
            if problem is not None:
                log.error("this node signs no receipt and publishes no key: %s", problem)
            else:
                log.info("this node's receipt signing key %s is the deployment's again: it signs receipts",
                         self._current)
        self._problem = problem
