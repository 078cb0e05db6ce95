"""Ports: one small interface per stateful backend.

Each port has an embedded adapter (SQLite or in-memory) and a production
adapter (PostgreSQL or Redis); one contract suite in ``tests/contract/`` runs
against both. Every tenant-scoped method takes ``tenant_id`` first: adapters
scope every query by it, and PostgreSQL enforces it again with row-level
security (``SET LOCAL stockade.tenant_id`` per transaction).

Adapters raise ``StockadeError('store.unavailable')`` (or the port's own
``*.unavailable`` code) when the backend cannot be reached, never a driver
exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from supervisor.stores.records import (
    ApiKey,
    Approval,
    AuditRecord,
    BudgetAccount,
    CapSpec,
    Event,
    IdempotencyEntry,
    Job,
    LedgerEntry,
    Project,
    RateDecision,
    RateRule,
    Reservation,
    Run,
    Tenant,
    User,
)

__all__ = [
    "ApprovalStore", "AuditLog", "BundleStore", "EventBus", "IdempotencyStore", "Ledger",
    "PolicyStore", "RateLimiter", "RunQueue", "RunStore", "TenantStore",
]


class TenantStore(Protocol):
    async def create_tenant(self, name: str) -> Tenant: ...  # conflict if the name exists
    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...
    async def get_tenant_by_name(self, name: str) -> Tenant | None: ...
    async def list_tenants(self) -> list[Tenant]: ...
    async def create_project(self, tenant_id: str, name: str) -> Project: ...
    async def get_project(self, tenant_id: str, project_id: str) -> Project | None: ...
    async def create_user(self, tenant_id: str, name: str) -> User: ...
    async def get_user(self, tenant_id: str, user_id: str) -> User | None: ...
    async def list_projects(self, tenant_id: str) -> list[Project]: ...
    async def list_users(self, tenant_id: str) -> list[User]: ...
    # project membership: a run or key carrying both a user and a project needs the user to be a member
    async def add_member(self, tenant_id: str, project_id: str, user_id: str) -> bool: ...  # True if it was not yet
    async def remove_member(self, tenant_id: str, project_id: str, user_id: str) -> bool: ...  # True if it was
    async def list_members(self, tenant_id: str, project_id: str) -> list[str]: ...  # user ids, in order
    async def is_member(self, tenant_id: str, project_id: str, user_id: str) -> bool: ...
    async def create_key(
        self, tenant_id: str, *, key_id: str, key_hash: str, prefix: str, role: str,
        user_id: str | None = None, project_id: str | None = None,
    ) -> ApiKey: ...
    async def find_key(self, key_hash: str) -> ApiKey | None: ...  # cross-tenant lookup by hash (auth)
    async def list_keys(self, tenant_id: str) -> list[ApiKey]: ...
    async def revoke_key(self, tenant_id: str, key_id: str) -> bool: ...


class RunStore(Protocol):
    """Runs, conversations and the durable per-run event log."""

    async def create_run(self, run: Run) -> tuple[Run, bool]:
        """Insert; if (tenant, idempotency_key) exists return (existing, False)."""
        ...
    async def get_run(self, tenant_id: str, run_id: str) -> Run | None: ...
    async def get_run_by_idempotency_key(self, tenant_id: str, key: str) -> Run | None: ...  # the key as stored
    async def get_run_any_tenant(self, run_id: str) -> Run | None: ...  # workers only
    async def list_runs(self, tenant_id: str, *, limit: int = 50, before: float | None = None,
                        user_id: str | None = None, project_id: str | None = None,
                        before_id: str | None = None, max_bytes: int | None = None) -> list[Run]:
        """Newest first. The cursor: runs created before ``before``, or at ``before`` with an id below
        ``before_id`` (runs share a created_at: a page may end inside such a group). None: any.
        ``max_bytes``: the page ends with the run that brings its inputs and outputs (UTF-8) to that many
        bytes or more (the first run always comes)."""
        ...
    async def list_runs_by_status(self, statuses: tuple[str, ...], limit: int = 1000) -> list[Run]: ...  # workers
    async def ended_among(self, run_ids: list[str]) -> set[str]:  # workers: which of these are over
        """The ids among ``run_ids`` whose run has a terminal status (any tenant), in one query."""
        ...
    async def set_status(self, tenant_id: str, run_id: str, status: str, **fields: Any) -> Run | None:
        """Move a non-terminal run to a non-terminal status; None if the run is terminal."""
        ...
    async def start_run(self, tenant_id: str, run_id: str, *, worker_id: str, started_at: float) -> Run | None:
        """queued -> running for exactly one claimer: None unless the run was still queued. Its first beat."""
        ...
    async def beat_runs(self, run_ids: list[str], worker_id: str) -> None:  # workers: the runs they still carry
        """Mark these running / waiting_approval runs (any tenant) that ``worker_id`` carries as seen now, by the
        store's own clock. A run another worker took over (``take_over``) is not marked any more."""
        ...
    async def hold(self, run_id: str, worker_id: str) -> bool:  # workers: the fence (chain/lease.py)
        """One statement: mark the run (any tenant) seen now (by the store's clock, and always to a value other
        than the one it had) only if it is running / waiting_approval and carried by ``worker_id``. True if it
        was: then no ``take_over`` with a ``seen_at`` read before can succeed."""
        ...
    async def take_over(self, run_id: str, holder: str | None, seen_at: float | None, by: str) -> bool:  # enders
        """One statement: the run (any tenant) passes to ``by`` only if it is running / waiting_approval, still
        carried by ``holder`` and its ``seen_at`` is still exactly ``seen_at`` (the value watched unchanged;
        None compares equal to a NULL). True if it did: its old holder's ``hold`` fails from then on. A takeover
        by the holder's own id (``by == holder``) is refused (False): the run would stay the holder's, and its
        hold would pass (``runs.lost.take_over`` takes such a run under another name)."""
        ...
    async def quiet_runs(self, quiet_s: float, limit: int = 1000) -> list[tuple[Run, float]]:  # sweeps
        """Running / waiting_approval runs (any tenant) last seen ``quiet_s`` or more seconds ago by the
        store's clock, with that ``seen_at``, oldest first. Runs never seen (started before the store
        had ``seen_at``) are left out."""
        ...
    async def last_seen(self, run_id: str) -> float | None:  # workers: is a lapsed job's holder alive?
        """This run's ``seen_at`` (any tenant) while it is running / waiting_approval; None once it has
        ended, or if it was never seen."""
        ...
    async def let_go(self, tenant_id: str, run_id: str) -> None:  # workers: done with an ended run
        """The worker that carried this ended run has recorded all of it (the calls its end interrupted
        included): ``seen_at`` is cleared. No-op for a run not ended."""
        ...
    async def keep_output(self, tenant_id: str, run_id: str, output: str) -> bool:  # workers: a run ended elsewhere
        """The answer an ended run streamed before it was ended elsewhere (an API cancel: the API knows
        nothing of it) becomes its output, if it has none yet. True if it was stored."""
        ...
    async def stored_answer(self, tenant_id: str, run_id: str, max_bytes: int) -> str:  # a lost run's output
        """The run's stored ``message.delta`` texts on the ``answer`` channel, in order, joined: what its
        worker would have stored as its output. Only the first deltas whose texts add up to ``max_bytes``."""
        ...
    async def held(self, tenant_id: str, run_id: str) -> float | None:  # receipts: is the run all recorded?
        """Seconds (the store's clock) since a worker last marked this ended run, if that worker has not let
        go of it yet; None once it has, for a run not ended, or one no worker carried."""
        ...
    async def append_event(self, tenant_id: str, run_id: str, type: str, data: dict[str, Any]) -> Event:
        """Append with the next gap-free per-run seq (1, 2, ...). Refuses after the terminal event."""
        ...
    async def finish_run(
        self, tenant_id: str, run_id: str, status: str, event_type: str, data: dict[str, Any], *,
        when_status: str | None = None, **fields: Any
    ) -> Event | None:
        """Atomically: set a terminal status and append the one terminal event.

        Returns None (and changes nothing) if the run already ended, or, with ``when_status``, if its status
        is not that one (a queued run ended only while no worker has started it).
        """
        ...
    async def events_after(self, tenant_id: str, run_id: str, after: int, limit: int = 1000) -> list[Event]: ...
    async def conversation_history(self, tenant_id: str, conversation_id: str, before_run: str,
                                   max_bytes: int | None = None) -> list[dict[str, str]]:
        """Earlier turns as [{"role": "user"|"assistant", "content": ...}], oldest first. ``max_bytes``: only
        the newest runs whose inputs and outputs (UTF-8) add up to at most that many bytes, each run whole,
        each counting ``HISTORY_RUN_BYTES`` more (the JSON around its turns)."""
        ...


class EventBus(Protocol):
    """Live tail of run events across processes (memory or Redis Streams).

    The durable copy is in RunStore; the bus only carries the live tail so any
    API process can stream any run. ``tail`` yields events with seq > after and
    may skip ones it no longer holds; callers fill gaps from RunStore.
    """

    async def publish(self, event: Event) -> None: ...
    def tail(self, run_id: str, after: int) -> AsyncIterator[Event]: ...
    async def close(self) -> None: ...


class RunQueue(Protocol):
    async def enqueue(self, tenant_id: str, run_id: str) -> None: ...
    async def claim(self, worker_id: str, timeout_s: float) -> Job | None:
        """Block up to timeout_s; a claimed job not acked/extended within the visibility timeout is redelivered."""
        ...
    async def extend(self, job: Job) -> None: ...
    async def ack(self, job: Job) -> None: ...
    async def fail(self, job: Job) -> None: ...  # drop it for good
    async def requeue(self, job: Job) -> None: ...
    async def depth(self) -> int: ...


class AuditLog(Protocol):
    """Append-only, per-tenant hash chain. The adapter computes nothing cryptographic:
    the domain (supervisor.audit) computes hash/mac from the head it is handed, inside
    the adapter's transaction, through ``seal``."""

    async def append(self, tenant_id: str, fields: dict[str, Any], seal: Any) -> AuditRecord:
        """``seal(prev_hash, seq, fields, prev_mac) -> (hash, mac)`` is called under the chain lock.
        ``prev_mac`` is the head record's MAC when the adapter read the head (it is not this process's own
        last write), else None; an adapter for which that read costs a round trip makes it only when
        ``seal.wants_head_mac()`` (if present) is true (supervisor/audit/chain.py: rolling rotation)."""
        ...
    async def list(self, tenant_id: str, *, after_seq: int = 0, limit: int = 100, run_id: str | None = None) -> list[AuditRecord]: ...
    async def head(self, tenant_id: str) -> AuditRecord | None: ...
    async def tenants(self, limit: int | None = None) -> list[str]:
        """Every tenant with a chain, in id order; ``limit``: the first that many with a record (a cheap sample,
        for the start-up check of the audit key: supervisor/audit/key_check.py)."""
        ...
    async def deployment_key(self, name: str) -> str | None:
        """The key id the deployment uses for ``name`` (``receipt.signing``), None if none is recorded yet."""
        ...
    async def claim_deployment_key(self, name: str, key_id: str, replaces: str | None) -> str | None:
        """Record ``key_id`` for ``name`` if the recorded one is still ``replaces`` (None: none recorded) -
        a compare-and-set, so two nodes starting at once cannot both move it; the recorded id afterwards.
        (supervisor/audit/signing_check.py)"""
        ...


class ApprovalStore(Protocol):
    async def create(self, approval: Approval) -> Approval: ...
    async def get(self, tenant_id: str, approval_id: str) -> Approval | None: ...
    async def list(self, tenant_id: str, status: str | None = None, limit: int = 100, run_id: str | None = None,
                   user_id: str | None = None, project_id: str | None = None, before: str | None = None,
                   ) -> list[Approval]:
        """Newest first; user_id / project_id: of that user's / project's runs; before: an approval id,
        the page after it (an empty one if the id is unknown)."""
        ...
    async def decide(
        self, tenant_id: str, approval_id: str, *, status: str, decided_by: str | None, reason: str | None, now: float,
        user_id: str | None = None,
    ) -> Approval:
        """pending -> approved/rejected/expired exactly once; raises StockadeError('approval.already_decided').
        An approve/reject by a key is also appended to ``votes`` (``user_id``: the key's user). For a request
        of one approver (``required_approvals`` 1); several go through ``vote``."""
        ...
    async def vote(
        self, tenant_id: str, approval_id: str, *, key_id: str, user_id: str | None, decision: str,
        reason: str | None, now: float, expected_votes: int | None = None,
    ) -> Approval:
        """One approver's vote (``approve``/``reject``), judged by ``Approval.with_vote`` with the request
        locked against other voters on any process: appended to ``votes``; one reject rejects, the
        ``required_approvals``-th approve approves (``decided_by`` = that voter); otherwise it stays pending.
        A second vote of a key (or user) -> ``approval.already_decided``; past due -> kept expired and
        ``approval.expired``; ``expected_votes`` given and other votes landed since -> ``conflict``,
        nothing written."""
        ...
    async def expire_due(self, now: float) -> list[Approval]: ...


class IdempotencyStore(Protocol):
    async def begin(self, tenant_id: str, key: str, now: float) -> IdempotencyEntry | None:
        """Claim the key. None if we claimed it; else the existing entry (pending or done)."""
        ...
    async def complete(self, tenant_id: str, key: str, result: dict[str, Any]) -> None: ...
    async def abandon(self, tenant_id: str, key: str) -> None: ...  # the call failed before a side effect
    async def get(self, tenant_id: str, key: str) -> IdempotencyEntry | None: ...
    async def prune(self, done_before: float, pending_before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` keys of any tenant: done ones created before ``done_before``, pending
        ones before ``pending_before``. Returns how many went."""
        ...


class Ledger(Protocol):
    async def set_cap(self, tenant_id: str, scope: str, scope_id: str, cap_micro: int, period: str = "month") -> BudgetAccount: ...
    async def set_caps(self, tenant_id: str, caps: Sequence[CapSpec]) -> list[BudgetAccount]:
        """Several caps (scope, scope_id, cap_micro, period) in ONE transaction: all are set or none."""
        ...
    async def accounts(self, tenant_id: str, now: float) -> list[BudgetAccount]: ...
    async def reserve(
        self, tenant_id: str, scopes: list[tuple[str, str]], amount_micro: int, *,
        reservation_id: str, run_id: str | None, expires_at: float, now: float,
    ) -> Reservation:
        """All tiers or none; raises StockadeError('budget.exceeded', tier=scope)."""
        ...
    async def commit(self, tenant_id: str, reservation_id: str, actual_micro: int, *, tool: str | None, now: float) -> list[LedgerEntry]: ...
    async def release(self, tenant_id: str, reservation_id: str) -> None: ...
    async def release_run(self, tenant_id: str, run_id: str) -> int: ...
    async def sweep(self, now: float) -> int: ...  # release expired reservations
    async def entries(self, tenant_id: str, *, after_id: int = 0, limit: int = 100) -> list[LedgerEntry]: ...


class RateLimiter(Protocol):
    async def check(self, rules: list[RateRule], now: float | None = None) -> RateDecision:
        """All rules or none consume; a refused call consumes nothing."""
        ...


class BundleStore(Protocol):
    """Registry of immutable, content-hashed bundle versions (files live in data_dir)."""

    async def put_version(self, tenant_id: str | None, name: str, version: str, digest: str, manifest: dict[str, Any]) -> bool: ...
    async def latest(self, tenant_id: str | None, name: str) -> dict[str, Any] | None: ...
    async def get_version(self, tenant_id: str | None, name: str, digest: str) -> dict[str, Any] | None: ...
    async def list(self, tenant_id: str) -> list[dict[str, Any]]: ...  # the tenant's own + platform bundles
    # Retire (delete) every live version of a name: latest/list skip them, get_version still finds them
    # (runs pinned to one go on); registering the name again brings it back. Returns how many were live.
    async def retire(self, tenant_id: str | None, name: str) -> int: ...


class PolicyStore(Protocol):
    """The tenant's current policy document (YAML text) and its content-hash version.

    History is kept (append-only versions); ``get`` returns the newest.
    """

    async def get(self, tenant_id: str) -> tuple[str, str] | None: ...  # (yaml_text, version)
    async def put(self, tenant_id: str, yaml_text: str, version: str) -> None: ...
