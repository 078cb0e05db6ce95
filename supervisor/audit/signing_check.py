"""Start-up check: is this node's receipt signing key the deployment's?

Receipts are signed when they are asked for, by whichever node serves the request, and verified against
the keys ``GET /v1/receipts/public-keys`` publishes. Nodes with keys of their own (a data dir each and no
shared ``STOCKADE_SIGNING_KEY_FILE``: each generated one) signed with keys the other nodes never published:
a receipt verified or not depending on which node a client asked, and nothing said why. Receipts are not
stored, so unlike the audit key (supervisor/audit/key_check.py) there is nothing to check a key against.

So the database records the id of the key the deployment signs with (``deployment_keys``, name
``receipt.signing``; the id only, a hash of the public key: no key is ever read from it), and a node's
start compares its keys with it:

- none recorded (the first node): this node's key becomes the deployment's;
- its current key: fine;
- its ``STOCKADE_SIGNING_KEY_FILE_NEXT``: fine - another node has switched already (pass 2 of a rolling
  rotation) and this one publishes that key;
- one of its ``STOCKADE_SIGNING_KEY_FILES_RETIRED``: the deployment rotates to this node's key, which is
  recorded (compare-and-set: of two nodes starting at once, one moves it and the other judges again);
- anything else: refused. Its receipts would verify against no other node's keys.

``stockade receipt adopt-key`` records this node's key whatever is recorded (a key lost for good).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from supervisor.stores.ports import AuditLog

__all__ = ["NAME", "adopt_signing_key", "check_signing_key", "shown_key_id"]

NAME = "receipt.signing"
_ROUNDS = 8  # lost compare-and-sets in a row before giving up (each means another node moved the id)
_KEY_ID = re.compile(r"[0-9a-f]{16}")  # supervisor/audit/keys.py key_id
_SHOWN = 40  # characters of a recorded value that is no key id, in a message


def shown_key_id(recorded: str | None) -> str | None:
    """``recorded`` as a message or the CLI shows it: a key id as is; anything else (a value a database writer
    put there: any length, control characters, bytes that are not UTF-8) escaped, cut, and said to be none."""
    if recorded is None or _KEY_ID.fullmatch(recorded):
        return recorded
    cut = ascii(recorded[:_SHOWN])[1:-1] + ("..." if len(recorded) > _SHOWN else "")
    return f"<not a key id: {cut}>"


async def check_signing_key(audit: AuditLog, current: str, retired: Iterable[str], next_id: str | None) -> str | None:
    """None when ``current`` (this node's key id) may sign for the deployment, else the refusal message."""
    retired = set(retired)
    recorded = await audit.deployment_key(NAME)
    for _ in range(_ROUNDS):
        if recorded == current or (recorded is not None and recorded == next_id):
            return None
        if recorded is not None and recorded not in retired:
            break
        after = await audit.claim_deployment_key(NAME, current, replaces=recorded)
        if after == current:
            return None
        recorded = after  # another node recorded its key first: judged again
    return (f"invalid setting STOCKADE_SIGNING_KEY_FILE: the deployment signs receipts with key "
            f"{shown_key_id(recorded)}, and this node signs with key {current}, with neither STOCKADE_SIGNING_KEY_FILE_NEXT nor "
            "STOCKADE_SIGNING_KEY_FILES_RETIRED naming the deployment's: receipts this node signed would verify "
            "against no other node's published keys. Give every node the same STOCKADE_SIGNING_KEY_FILE (or one shared STOCKADE_DATA_DIR); "
            "to rotate, list the old key as retired; if the deployment's key is lost for good, "
            "`stockade receipt adopt-key` makes this node's the deployment's")


async def adopt_signing_key(audit: AuditLog, current: str) -> str | None:
    """Record ``current`` as the deployment's signing key whatever is recorded; the id recorded before (``current``
    itself when it was this key already: nothing changed)."""
    for _ in range(_ROUNDS):
        recorded = await audit.deployment_key(NAME)
        if recorded == current or await audit.claim_deployment_key(NAME, current, replaces=recorded) == current:
            return recorded
    raise RuntimeError("the deployment's signing key kept changing while it was being adopted")
