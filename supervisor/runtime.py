"""A running supervisor node: services, the chain, the bundle registry, workers, sweeper, watcher.

``stockade serve`` starts every role in one process; ``stockade api`` only
the API's needs (no workers); ``stockade worker`` only workers and sweeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from supervisor.audit.chain import Sealer
from supervisor.audit.key_check import foreign_heads
from supervisor.audit.keys import (
    generated_here,
    key_id,
    load_audit_keys,
    load_audit_next_key,
    load_next_signing_key,
    load_retired_signing_keys,
    load_signing_key,
)
from supervisor.audit.recorder import AuditRecorder
from supervisor.audit.signing_check import check_signing_key as check_signing
from supervisor.audit.signing_watch import SigningWatch
from supervisor.chain.build import build_chain
from supervisor.errors import Outage, StockadeError
from supervisor.factory import open_services
from supervisor.services import Services
from supervisor.settings import Settings, SettingsError
from supervisor.tools.mcp.sealed import foreign_secrets

__all__ = ["Runtime", "open_runtime"]

log = logging.getLogger("stockade.runtime")
_PRUNE_BATCH = 1000  # idempotency keys deleted per statement
_PRUNE_BATCHES = 10  # statements per sweep


@dataclass
class Runtime:
    settings: Settings
    services: Services
    recorder: AuditRecorder
    sealer: Sealer
    signing_key: Any
    registry: Any
    chain: Any
    interceptors: list[Any] = field(default_factory=list)
    retired_signing_keys: list[Any] = field(default_factory=list)  # public keys: old receipts verify
    next_signing_key: Any = None  # public key (rolling rotation): published, signs nothing here
    # supervisor.audit.signing_watch.SigningWatch on nodes that sign receipts (serve, api): the recorded
    # deployment key read again while the node runs; None where the start-up check did not run either
    signing_watch: Any = None
    worker: Any = None
    warm: Any = None
    abandoned: Any = None  # supervisor.runs.lost.AbandonedRuns, on nodes with workers
    uid_claim: Any = None  # sandbox.uid_claim.UidClaim: this worker's host-wide claim on its uid range
    id_claim: Any = None  # stores.redis.worker_ids.WorkerIdClaim: this worker's claim on its id, fleet-wide
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    sandbox_problems: list[str] = field(default_factory=list)

    async def start(self, *, workers: bool, watch: bool, require_sandbox: bool = False) -> None:
        """``require_sandbox``: a worker-only node whose sandbox backend is not ready refuses to start
        (``sandbox.unavailable``) instead of taking its share of the fleet's runs and failing each."""
        try:
            await self._start(workers=workers, watch=watch, require_sandbox=require_sandbox)
        except BaseException:  # a refused start keeps no id claim renewed for the rest of the process: its
            await self._release_id()  # caller may never call stop (the id stayed held, its successor ran as ~2)
            raise

    async def _start(self, *, workers: bool, watch: bool, require_sandbox: bool) -> None:
        from supervisor.bundles.watcher import bundles_dir_problem, load_bundles_dir, watch_bundles_dir

        problem = bundles_dir_problem(self.settings.bundles_dir)
        if problem is None:
            await load_bundles_dir(self.registry, self.settings.bundles_dir)
            if watch and self.settings.watch_bundles:
                self.tasks.append(asyncio.create_task(
                    watch_bundles_dir(self.registry, self.settings.bundles_dir, stop=self.stop_event)))
        else:  # a typo or a missing mount started a node with no platform bundles and not a word said
            log.warning("platform bundles folder %s (STOCKADE_BUNDLES_DIR) %s: no platform bundles are loaded",
                        self.settings.bundles_dir, problem)
        if workers:
            from sandbox.checks import check_backend

            self.sandbox_problems = check_backend(self.settings.sandbox_bwrap)
            if self.sandbox_problems and require_sandbox:
                raise StockadeError("sandbox.unavailable", "the sandbox backend is not ready, so this worker would "
                                    "fail every run it took: " + "; ".join(self.sandbox_problems))
            if self.sandbox_problems:  # a node that also serves the API: its readiness says so, runs fail clearly
                log.error("sandbox backend not ready, no bundle will run: %s", "; ".join(self.sandbox_problems))
            self._claim_uids()  # before anything reaps "orphans" of the range: they may be another worker's
            await self._claim_id()
            warm_up = getattr(self.services.tools, "warm_up", None)
            if warm_up is not None:
                warm_up()  # the LLM SDKs (seconds to import), in threads, before the first call
            await self._recover()
            await self._reap_orphans()
            if self.settings.sandbox_warm_pool > 0 and not self.sandbox_problems:
                from supervisor.runs.warm import WarmPool

                self.warm = WarmPool(self.settings, self.services.extras.get("uid_pool"))
                self.warm.start()
            from supervisor.runs.lost import AbandonedRuns

            self.abandoned = AbandonedRuns(self.services.runs, self.settings.queue_visibility_s)
            self.worker = self._make_worker()
            self.tasks.append(asyncio.create_task(self.worker.run_forever(self.stop_event)))
            self.tasks.append(asyncio.create_task(self._sweeper()))

    def _claim_uids(self) -> None:
        """The host-wide claim on this worker's sandbox uid range (``sandbox.uid_claim``), held until ``stop``."""
        pool = self.services.extras.get("uid_pool")
        if pool is None or self.uid_claim is not None:
            return
        from sandbox.errors import SandboxError
        from sandbox.uid_claim import claim_uid_range

        try:
            self.uid_claim = claim_uid_range(pool.base, pool.count)
        except SandboxError as exc:
            raise StockadeError("settings.invalid", exc.detail) from None
        except OSError as exc:  # /run not writable (an unusual container): the operator keeps ranges apart
            log.warning("sandbox uid range not claimed (%s): make sure no other worker on this host uses "
                        "STOCKADE_SANDBOX_UID_BASE..+COUNT %d..%d", exc, pool.base, pool.base + pool.count - 1)

    async def _claim_id(self) -> None:
        """With a shared queue (Redis), one live worker per ``STOCKADE_WORKER_ID`` (``stores/redis/worker_ids.py``;
        the default id, hostname:pid, is this process's own)."""
        client = self.services.extras.get("redis")
        if client is None or self.id_claim is not None or not self.settings.worker_id:
            return
        from supervisor.stores.redis.worker_ids import claim_worker_id

        self.id_claim = await claim_worker_id(client, self.settings.redis_prefix, self.settings.worker_id,
                                              self.settings.queue_visibility_s)

    async def _release_id(self) -> None:
        claim, self.id_claim = self.id_claim, None
        if claim is not None:
            await claim.release()

    @property
    def worker_id(self) -> str:
        """This process's worker id: the one claimed (``id~2`` when another live worker holds the configured
        one), else ``STOCKADE_WORKER_ID``, else hostname:pid."""
        from supervisor.stores.redis.worker_ids import process_worker_id

        if self.id_claim is not None:
            return self.id_claim.worker_id
        return self.settings.worker_id or process_worker_id()

    def _make_worker(self) -> Any:
        from supervisor.runs.worker import Worker

        uid_pool = self.services.extras.get("uid_pool")
        try:
            from supervisor.policy import load_bundle_policy
        except ImportError:  # pragma: no cover
            load_bundle_policy = None
        forget = [i.forget_run for i in self.interceptors if hasattr(i, "forget_run")]
        return Worker(self.services, self.chain, self.recorder, self.registry, worker_id=self.worker_id,
                      uid_pool=uid_pool, bundle_policy_loader=load_bundle_policy, on_run_end=forget, warm=self.warm)

    async def _recover(self) -> None:
        """Embedded queue lives in memory: after a restart, queue what was queued again; runs that were
        executing in this process are lost (never re-run: side effects may have happened)."""
        if self.settings.redis_url:
            return
        from supervisor.runs.lost import end_lost

        s = self.services
        for run in await s.runs.list_runs_by_status(("queued",)):
            await s.queue.enqueue(run.tenant_id, run.id)
        for run in await s.runs.list_runs_by_status(("running", "waiting_approval")):
            await end_lost(s, run, "the server restarted during this run")

    async def _sweeper(self) -> None:
        s = self.services
        outages: dict[str, Outage] = {}  # per step: an outage is logged when it starts and ends, not every sweep
        runs_outage = Outage(log, "sweep of queued and abandoned runs")
        while not self.stop_event.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), self.settings.sweep_interval_s)
            now = time.time()
            # Each step on its own: one that fails (Redis away: the queue's step) must not hold the others
            # back (expiring approvals and reservations in PostgreSQL, killing orphaned sandboxes).
            steps = (("ledger", s.ledger.sweep, (now,)), ("approvals", s.approvals.expire_due, (now,)),
                     ("idempotency keys", self.prune_idempotency_keys, (now,)),
                     ("orphaned sandboxes", self._reap_orphans, ()),
                     ("dead workers' warm slots", self._sweep_dead_slots, ()))
            for name, step, args in steps:
                outage = outages.setdefault(name, Outage(log, f"sweep of {name}"))
                try:
                    await step(*args)
                except Exception:
                    outage.failed("sweep of %s failed", name)
                else:
                    outage.ok()
            try:  # together: a run counts as abandoned only after consecutive sweeps that saw the whole queue
                await self.requeue_orphans(now)
                await self.end_abandoned_runs()
            except Exception:
                self.abandoned.forget()  # its watch needs consecutive successful sweeps
                runs_outage.failed("sweep of queued and abandoned runs failed")
            else:
                runs_outage.ok()

    async def prune_idempotency_keys(self, now: float) -> int:
        """Drop tool-call idempotency keys past ``idempotency_ttl_s`` (each holds its result, replayed to
        repeats: without this the table only grew). A pending key - its claimant may still hold it through
        an approval wait and the tool's run, or was lost - is kept a day past both. At most
        ``_PRUNE_BATCHES`` batches a sweep: a backlog drains over several sweeps, none of them long."""
        done_before = now - self.settings.idempotency_ttl_s
        pending_before = done_before - self.settings.approval_ttl_s - 86_400
        pruned = 0
        for _ in range(_PRUNE_BATCHES):
            n = await self.services.idempotency.prune(done_before, pending_before, _PRUNE_BATCH)
            pruned += n
            if n < _PRUNE_BATCH:
                break
        return pruned

    async def _sweep_dead_slots(self) -> None:
        """Directories of warm slots (and the runs that took them) whose worker died: on the data volume
        every node shares, nothing else would remove them (supervisor.runs.sandboxing.sweep_dead_slots)."""
        from supervisor.runs.sandboxing import sweep_dead_slots

        removed = await asyncio.to_thread(sweep_dead_slots, self.settings.data_dir)
        if removed:
            log.warning("removed %d warm sandbox folder(s) left by a worker that died", removed)

    async def _reap_orphans(self) -> None:
        """Kill sandbox children left blocked by an earlier supervisor killed mid-setup (sandbox.orphans)."""
        from sandbox.orphans import reap_orphans

        pool = self.services.extras.get("uid_pool")
        uids = pool if pool is not None else {os.getuid()}  # without root, sandboxes run as our own uid
        killed = await asyncio.to_thread(reap_orphans, uids)
        if killed:
            log.warning("killed %d orphaned sandbox process(es) left by a supervisor that died mid-setup", killed)

    async def requeue_orphans(self, now: float) -> int:
        """Queue again the runs stored as queued whose job the queue no longer holds: Redis restarted
        empty (compose keeps nothing on disk), so no worker would ever take them. Only when no job is
        waiting at all, and only runs queued longer than two visibility timeouts; a second job for a run
        that turns out to be alive is harmless (one claimer starts a queued run; a first delivery for a
        started run is dropped: Worker.execute)."""
        s = self.services
        if not self.settings.redis_url or await s.queue.depth() > 0:
            return 0
        cutoff = now - 2 * float(self.settings.queue_visibility_s)
        orphans = [r for r in await s.runs.list_runs_by_status(("queued",), limit=1000) if r.created_at < cutoff]
        for run in orphans:
            await s.queue.enqueue(run.tenant_id, run.id)
        if orphans:
            log.warning("queued again %d run(s) the queue no longer held (did Redis restart empty?)", len(orphans))
        return len(orphans)

    async def end_abandoned_runs(self) -> int:
        """End as lost (``runs.lost.end_lost``) the running runs no worker carries any more: their worker
        died and the queue had lost their job too (Redis restarted empty), so no redelivery would ever end
        them. Who counts as gone, and why a run on a live worker never does: ``supervisor/runs/lost.py``.
        Each is taken over first (with the ``seen_at`` watched unchanged); one whose worker marked it since
        (it came back) or that another ender took is left alone."""
        from supervisor.runs.lost import end_lost, take_over

        me = self.worker.worker_id if self.worker is not None else self.worker_id
        ended = 0
        for run, seen_at in await self.abandoned.confirmed():
            if not await take_over(self.services, run, seen_at, me):
                continue
            if await end_lost(self.services, run, "the run was interrupted: its worker was lost") is not None:
                ended += 1
        if ended:
            log.warning("ended %d run(s) whose worker was lost and whose job the queue no longer held", ended)
        return ended

    async def stop(self) -> None:
        self.stop_event.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self.warm is not None:
            await self.warm.close()
        for icpt in self.interceptors:  # settlements still in flight (budget commits) finish first
            drain = getattr(icpt, "drain", None)
            if drain is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(drain(), 5.0)
        await self._release_id()  # the worker has stopped: its id is free for its successor at once
        await self.services.close()
        if self.uid_claim is not None:
            self.uid_claim.release()
            self.uid_claim = None


async def open_runtime(settings: Settings, *, migrate: bool = True, check_audit_key: bool = True,
                       check_secrets_key: bool = True, check_signing_key: bool = True) -> Runtime:
    """``check_audit_key``: refuse keys that verify none of the audit records already stored
    (supervisor/audit/key_check.py); off for ``stockade audit verify``, which reports what they verify.
    ``check_secrets_key``: the same for the secrets key and the stored MCP secrets; off for ``stockade secrets
    reseal``, which reports what it cannot open. ``check_signing_key``: refuse a receipt signing key that is not
    the deployment's (supervisor/audit/signing_check.py); off for the commands that sign nothing (``audit``,
    ``receipt``). A refused start keeps none of the keys it generated."""
    with generated_here() as made:
        return await _open_runtime(settings, made, migrate=migrate, check_audit_key=check_audit_key,
                                   check_secrets_key=check_secrets_key, check_signing_key=check_signing_key)


async def _open_runtime(settings: Settings, made: list[Any], *, migrate: bool, check_audit_key: bool,
                        check_secrets_key: bool, check_signing_key: bool) -> Runtime:
    from supervisor.bundles.registry import BundleRegistry

    keys_dir = settings.data_dir / "keys"

    async def refuse(message: str) -> NoReturn:
        # the keys this start generated go too: a node fixed only as the message says (its audit key) started
        # with a secrets key of its own, made by the refused start, that opened none of the stored secrets.
        # Only those this start made (``made``): not the ones a node starting on the same data dir at the same
        # moment made, and runs with (a listing of the dir took them too: that node lost its audit key)
        for path in made:
            path.unlink(missing_ok=True)
        await services.close()
        raise SettingsError(message)

    services = await open_services(settings, migrate=migrate)
    generated = settings.data_dir / "keys" / "audit.key"
    # (a key made while retired keys are listed is a rotation: README, "move audit.key out ... list it as retired")
    fresh_key = settings.audit_key is None and not settings.audit_keys_retired and not generated.exists()
    current, retired = load_audit_keys(settings)
    if fresh_key and await services.audit.tenants():
        # A node with a data dir of its own (no shared volume, no STOCKADE_AUDIT_KEY) made a key of its own
        # and sealed records the other nodes' key does not verify: `audit verify` reported them as forged.
        # The key just made is not kept, so the next start is refused too, until the node gets the real one.
        await refuse(
            f"invalid setting STOCKADE_AUDIT_KEY: unset, and no key in {generated.parent}, but the database "
            "already holds audit records sealed with another key: give every node the same STOCKADE_AUDIT_KEY "
            "(or one shared STOCKADE_DATA_DIR); a key of this node's own would break every tenant's chain")
    # seals under the current key (the next one once another node does); verifies under the others too
    sealer = Sealer(current, retired, load_audit_next_key(settings, current, retired))
    if check_audit_key and (foreign := await foreign_heads(services.audit, sealer)):
        await refuse(
            f"invalid setting STOCKADE_AUDIT_KEY: it verifies the newest audit record of none of the {foreign} "
            "tenants looked at (nor does any key of STOCKADE_AUDIT_KEYS_RETIRED or STOCKADE_AUDIT_KEY_NEXT): "
            "another key sealed them, and records this node sealed would read as forged. Give every node the "
            "same STOCKADE_AUDIT_KEY (`stockade audit verify` shows what a key verifies)")
    # A secrets key this start generated, while the database holds MCP secrets sealed already: a node with a
    # data dir of its own, whose every MCP call would fail secret.unreadable (as for the audit key above).
    mcp = services.extras.get("mcp")
    fresh_secrets = (settings.secrets_key is None and not settings.secrets_keys_retired
                     and keys_dir / "secrets.key" in made)
    if check_secrets_key and fresh_secrets and mcp is not None and (
            tenant := await foreign_secrets(mcp.store, [t.id for t in await services.tenants.list_tenants()])):
        await refuse(
            f"invalid setting STOCKADE_SECRETS_KEY: unset, and no key in {keys_dir}, but the database already holds "
            f"MCP secrets sealed with another key (tenant {tenant}'s, first): every MCP call on this node would fail. "
            "Give every node the same STOCKADE_SECRETS_KEY (or one shared STOCKADE_DATA_DIR)")
    signing_key = load_signing_key(settings)
    retired_signing = load_retired_signing_keys(settings, signing_key)
    next_signing = load_next_signing_key(settings, signing_key, retired_signing)
    signing_ids = (key_id(signing_key), [key_id(k) for k in retired_signing],
                   None if next_signing is None else key_id(next_signing))
    if check_signing_key and (problem := await check_signing(services.audit, *signing_ids)):
        await refuse(problem)
    signing_watch = SigningWatch(services.audit, *signing_ids) if check_signing_key else None
    recorder = AuditRecorder(services.audit, sealer, services.metrics)
    chain, interceptors = build_chain(recorder)
    _install_redirect_guard(services, interceptors)
    registry = BundleRegistry(services.bundles, settings.data_dir / "bundles",
                              max_files=settings.bundle_max_files, max_bytes=settings.bundle_max_bytes)
    services.extras["registry"] = registry
    if os.geteuid() == 0:
        from sandbox.identity import UidPool

        # one pool per node: bundle sandboxes and code.run sandboxes never share a uid
        services.extras["uid_pool"] = UidPool(settings.sandbox_uid_base, settings.sandbox_uid_count)
    return Runtime(settings=settings, services=services, recorder=recorder, sealer=sealer,
                   signing_key=signing_key, registry=registry, chain=chain, interceptors=interceptors,
                   retired_signing_keys=retired_signing, next_signing_key=next_signing, signing_watch=signing_watch)


def _install_redirect_guard(services: Services, interceptors: list[Any]) -> None:
    """http.request re-runs the policy on every redirect hop through the chain's own policy step."""
    from supervisor.chain.policy import PolicyInterceptor

    policy = next((i for i in interceptors if isinstance(i, PolicyInterceptor)), None)
    if policy is None:
        return

    async def guard(url_text: str, ctx: Any) -> None:
        if ctx.call is None:
            raise StockadeError("policy.unavailable", "redirect hop without a governed call")
        await policy.recheck_resource(ctx.call, url_text)

    services.extras["http.redirect_guard"] = guard
