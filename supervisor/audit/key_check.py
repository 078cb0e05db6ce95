"""Start-up check: do this node's audit keys verify what the database already holds?

A node given the wrong ``STOCKADE_AUDIT_KEY`` (a typo, another deployment's secret, a node left out of a
rotation) sealed records no other node's key verifies: every one read as forged in ``audit verify``, and
each tenant's chain was broken for good at its first such record. Before the node seals anything it reads
the newest record of a few tenants' chains; when one of them is made by a key it holds (current, retired
or next) the keys are the deployment's, and when none is (while at least one was whole enough to tell)
the node is refused. A record whose content no longer matches its hash says nothing about the key (the
record was changed: ``audit verify`` reports it) and neither does a chain the store cannot read.
"""

from __future__ import annotations

from supervisor.audit.chain import MAC_INVALID, Sealer, record_key
from supervisor.errors import StockadeError
from supervisor.stores.ports import AuditLog

__all__ = ["SAMPLE", "foreign_heads"]

SAMPLE = 8  # chains looked at: one verifying head clears the keys


async def foreign_heads(audit: AuditLog, sealer: Sealer) -> int:
    """How many of the sampled chain heads none of ``sealer``'s keys made; 0 as soon as one of them did
    (or when no head could tell)."""
    foreign = 0
    for tenant_id in await audit.tenants(limit=SAMPLE):
        try:
            head = await audit.head(tenant_id)
        except StockadeError:  # audit.corrupt: a cut tail (audit verify's to report), not a key question
            continue
        if head is None:
            continue
        problem, _ = record_key(tenant_id, head, sealer)
        if problem is None:
            return 0
        if problem == MAC_INVALID:
            foreign += 1
    return foreign
