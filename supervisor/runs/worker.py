"""The worker: claims queued runs and carries each from sandbox launch to its one terminal event."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sandbox.errors import SandboxError
from sandbox.launcher import launch
from supervisor.audit.recorder import AuditRecorder
from supervisor.chain.base import Binding
from supervisor.chain.build import Chain
from supervisor.chain.lease import RunLease
from supervisor.errors import ERRORS, Outage, StockadeError
from supervisor.events import RunEmitter, finish_run_anywhere
from supervisor.metrics import CountedEmitter, SupervisorMetrics
from supervisor.peer import verify_peer
from supervisor.runs.cancel_watch import CancelWatch
from supervisor.runs.history import conversation_history
from supervisor.runs.lost import RunBeat, end_lost, holder_alive, take_over
from supervisor.runs.sandboxing import build_spec, events_per_s_for, limits_for, listen_run_socket, make_run_dirs
from supervisor.runs.warm import copy_bundle
from supervisor.session import RunSession
from supervisor.stores.records import TERMINAL_STATUSES, Job, Run

__all__ = ["Worker"]

log = logging.getLogger("stockade.worker")
CANCEL_POLL_S = 0.25
OUTAGE_RETRY_S = 5.0  # a run the store could not record is retried this often until the store is back
SHUTDOWN_END_S = 5.0  # a stopping worker's bound per step of ending each run (SIGTERM; compose grants 15 s)
DRAIN_MIN_S = 2.0  # after the sandbox exits: the least time its session gets to read the rest, and the
# grace its calls still in flight then get


class Worker:
    def __init__(self, services: Any, chain: Chain, recorder: AuditRecorder, registry: Any, *,
                 worker_id: str, uid_pool: Any = None, bundle_policy_loader: Any = None,
                 on_run_end: list[Any] | None = None, warm: Any = None) -> None:
        self.s = services
        self.chain = chain
        self.recorder = recorder
        self.registry = registry
        self.worker_id = worker_id
        self.uid_pool = uid_pool
        self.bundle_policy_loader = bundle_policy_loader
        self.on_run_end = on_run_end or []  # per-run state holders (policy velocity/order history)
        self.warm = warm  # supervisor.runs.warm.WarmPool, or None
        self.settings = services.settings
        self.metrics: SupervisorMetrics = getattr(services, "metrics", None) or SupervisorMetrics()
        self._slots = asyncio.Semaphore(self.settings.worker_concurrency)
        self._tasks: set[asyncio.Task] = set()
        self.started: dict[str, float] = {}  # run_id -> monotonic time main() was entered (bench hook)
        self.cancels = CancelWatch(services.runs, CANCEL_POLL_S)  # runs ended elsewhere (API cancel)
        self._unended: set[str] = set()  # runs started here whose end could not be stored (a later delivery ends them)
        self.beats = RunBeat(services.runs, self.settings, worker_id)  # the runs carried here, for sweepers (runs/lost.py)
        # run_id -> the job delivery this worker holds for a run it carries (a lapsed lease that comes back
        # here is adopted: ``execute``)
        self._leases: dict[str, Job] = {}
        self._watches: set[asyncio.Task] = set()  # redelivered jobs of other workers' runs, being judged
        # run_id -> this worker's lease on a run it carries (supervisor/chain/lease.py), kept by ``_heartbeat``
        # and checked by the chain's fence before a call's side effects
        self._fences: dict[str, RunLease] = {}

    # ------------------------------------------------------------------ loop
    async def run_forever(self, stop: asyncio.Event) -> None:
        try:
            await self._claim_loop(stop)
        finally:
            # Also when this loop is canceled (the node stops): end the runs in flight here while the
            # stores are still open, so their calls settle and they end now, not one visibility timeout later.
            await self.drain()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        outage = Outage(log, "the queue")  # said when it starts and ends, not every retry
        while not stop.is_set():
            await self._slots.acquire()
            try:
                job = await self.s.queue.claim(self.worker_id, timeout_s=1.0)
                outage.ok()
            except StockadeError:
                self._slots.release()
                outage.failed("queue unavailable; retrying")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception:  # a bug, not an outage: logged, and the loop goes on (had it ended, this
                # node would never claim a run again, and nothing would say so)
                self._slots.release()
                log.exception("claiming a run failed; retrying")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            if job is None:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._guarded(job))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def drain(self) -> None:
        tasks = self._tasks | self._watches
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.cancels.close()
        await self.beats.close()

    async def _guarded(self, job: Job, work: Callable[[], Awaitable[None]] | None = None) -> None:
        """``execute(job)`` (or ``work``, for that job), its failures handled: the job retried or given up."""
        try:
            await (work() if work is not None else self.execute(job))
        except asyncio.CancelledError:
            raise
        except StockadeError as exc:
            if not exc.code.endswith(".unavailable"):
                log.error("run %s: worker error: %s", job.run_id, exc)
                return await self._give_up_or_retry(job)
            # The store (or bus, ledger, audit) is down - a full disk, a lost database. The run could
            # not even be ended; only the store coming back can end it. So keep its job, spaced out,
            # for as long as that takes: it ends then (as a lost run: its sandbox is gone).
            log.error("run %s: %s; retrying in %.0f s", job.run_id, exc, OUTAGE_RETRY_S)
            await asyncio.sleep(OUTAGE_RETRY_S)
            with contextlib.suppress(Exception):
                await self.s.queue.requeue(job)
        except Exception:
            log.exception("run %s: worker error", job.run_id)
            await self._give_up_or_retry(job)

    async def _give_up_or_retry(self, job: Job) -> None:
        with contextlib.suppress(Exception):
            if job.attempts < 3:
                return await self.s.queue.requeue(job)
            # a run nothing will pick up again must still end, or its clients wait forever: the job is
            # dropped only once the run has ended or is left to its holder (else it stays, and comes back
            # after the visibility timeout)
            run = await self.s.runs.get_run_any_tenant(job.run_id)
            if run is not None and run.status not in TERMINAL_STATUSES and run.status != "queued":
                # A started run: ended here, the reservations and approvals of its holder's call in flight would
                # go - another live worker's, this worker's own (run now), or those of an earlier process under
                # this worker's id, which may yet resume. It is left to its holder. Taking it over first is not
                # safe here: only a seen_at watched unchanged for a visibility timeout (holder_alive, the very
                # step that failed) proves its holder lost; the seen_at of the moment would let the takeover
                # succeed between two beats of a live holder. Nor does the run need this job: a live holder ends
                # it; a lost one marks it no more, and the sweepers (runs/lost.py AbandonedRuns) take it over and
                # end it.
                if getattr(self._leases.get(run.id), "receipt", None) == job.receipt:
                    return None  # the very delivery this worker runs the run on: acked when the run ends
                log.warning("run %s: its job failed %d times here, but it was started (worker %s); left to it",
                            run.id, job.attempts, run.worker_id or "none")
            elif run is not None and run.status == "queued":
                # only while still queued: a worker starting it meanwhile (a second job, requeue_orphans) keeps it
                # (nothing ran: nothing reserved, no approval asked)
                if await finish_run_anywhere(self.s.runs, self.s.events, run.tenant_id, run.id, "failed",
                                             {"code": "internal", "message": "the run could not be carried out"},
                                             when_status="queued", ended_at=time.time(),
                                             error_code="internal") is not None:
                    self.metrics.run_finished("failed", None)
            await self.s.queue.fail(job)

    # ------------------------------------------------------------------ one run
    async def execute(self, job: Job) -> None:
        s = self.s
        run = await s.runs.get_run_any_tenant(job.run_id)
        if run is None or run.status in TERMINAL_STATUSES:
            await s.queue.ack(job)
            return
        held = self._leases.get(run.id)
        if held is not None:  # this worker carries the run (claimed it, runs it): never a lost worker's job
            if held.receipt == job.receipt:
                # Its own job came back: a heartbeat missed the visibility timeout (an event loop stalled, a
                # slow queue). The run goes on here on this delivery (the old one's extends and requeues do
                # nothing now), acked when the run ends.
                log.warning("run %s: its job came back while this worker runs it (a heartbeat came too late); "
                            "the run goes on", run.id)
                self._leases[run.id] = job
            else:  # a second job for it (Runtime.requeue_orphans): dropped
                await s.queue.ack(job)
            return
        emitter = CountedEmitter(self.metrics, s.runs, s.events, run.tenant_id, run.id)
        if run.status != "queued" and job.attempts <= 1:
            # A job delivered for the first time, for a run already started: not a redelivery (a worker's
            # job comes back with attempts > 1) but a second job for the same run, queued again because
            # the queue had lost it (Runtime.requeue_orphans). The run is alive elsewhere: leave it be.
            log.info("run %s: second job for a run already started; dropped", run.id)
            await s.queue.ack(job)
            return
        if run.status != "queued":
            # redelivered: the lease of the worker that held it lapsed. Only late (alive) -> left to it; lost
            # mid-run -> ended. Side effects may have happened: never re-run. A run this worker started and
            # no longer carries (its end could not be stored) has no sandbox any more: ended at once.
            if run.id in self._unended:  # started here, its end never stored: no sandbox left anywhere
                await self._end_lapsed(run, job, emitter)  # (the store still down: raises, and it stays here)
                self._unended.discard(run.id)
                return
            # Any other run is watched first, also one stored under this worker's id: a worker restarted under
            # the same STOCKADE_WORKER_ID, or a second worker on the same id (one whose id claim lapsed in a freeze;
            # a second live worker given it runs as id~2: stores/redis/worker_ids.py),
            # whose run is alive (that one was ended at once as a lost worker's, live as it was)
            # judged beside this worker's runs, not in a run slot: a node that stalls can hand every other
            # node many such jobs at once, each watched for up to one visibility timeout
            watch = asyncio.get_running_loop().create_task(
                self._guarded(job, functools.partial(self._judge_lapsed, run, job, emitter)))
            self._watches.add(watch)
            watch.add_done_callback(self._watches.discard)
            return
        self._leases[run.id] = job
        # the lease exists before the run's session does (it is handed this lease), whenever the heartbeat runs
        lease = self._fences[run.id] = RunLease(self.s.runs, run.id, self.worker_id, self.settings.queue_visibility_s,
                                                functools.partial(self._extend, run.id))
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(lease))
        self.beats.carry(run.id)
        ended = False
        state: dict[str, bool] = {}  # how far _execute got: "starting" (start_run sent), "started"
        try:
            await self._execute(run, emitter, state)
            ended = True
        except Exception as exc:
            if not state.get("started"):
                raise  # still queued: the job's retries (_give_up_or_retry) decide
            # A started run is never run again, so a requeue only had it ended as a lost worker's, a visibility
            # timeout later: it fails now, saying so (a full disk under its run folder, a failed bind, a bug)
            log.exception("run %s: worker error", run.id)
            if isinstance(exc, SandboxError):  # e.g. no uid left: the operator's log line names the setting
                await self._fail(emitter, "sandbox.unavailable", "no sandbox could be set up for the run (the "
                                                                 "server log says why)")
            else:
                await self._fail(emitter, "internal", "the run could not be carried out (the server log says why)")
            ended = True
        except asyncio.CancelledError:  # this node is stopping (SIGTERM)
            if state.get("started"):  # its sandbox is gone, so is the run (side effects may have happened)
                ended = await self._end_on_shutdown(run, emitter)
            elif not state.get("starting"):  # claimed, never started, nothing done: another worker runs it
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.queue.requeue(self._leases.get(run.id, job)), SHUTDOWN_END_S)
            # else start_run was in flight: the job stays; its redelivery runs the run (still queued) or ends it
            raise
        finally:
            heartbeat.cancel()
            if self._fences.get(run.id) is lease:
                del self._fences[run.id]
            if state.get("started"):
                self.metrics.runs_active.dec()
            self.beats.drop(run.id)
            job = self._leases.pop(run.id, job)  # the delivery held now (one that came back is adopted)
            await self._release(run)
            if ended:  # else the job stays: a run whose end could not be stored is ended by a later delivery
                with contextlib.suppress(Exception):  # all of it recorded: its receipt need wait no longer
                    await s.runs.let_go(run.tenant_id, run.id)
                await s.queue.ack(job)
            elif state.get("started"):
                self._unended.add(run.id)
            self.started.pop(run.id, None)
            for forget in self.on_run_end:
                forget(run.tenant_id, run.id)

    async def _judge_lapsed(self, run: Run, job: Job, emitter: RunEmitter) -> None:
        alive, seen_at = await holder_alive(self.s, run, job)
        if not alive and not await take_over(self.s, run, seen_at, self.worker_id):
            await self.s.queue.ack(job)  # its worker came back (its fence holds the run) or another ender has it
            return
        if alive:
            log.warning("run %s: its job came back, but its worker (%s) still carries it (a heartbeat came too "
                        "late); the run goes on there", run.id, run.worker_id)
            if run.worker_id == self.worker_id:
                log.error("run %s is carried by another live worker with this worker's id (%s): give each worker "
                          "its own STOCKADE_WORKER_ID (or leave it unset: hostname:pid)", run.id, self.worker_id)
            await self.s.queue.ack(job)
            return
        await self._end_lapsed(run, job, emitter)

    async def _end_lapsed(self, run: Run, job: Job, emitter: RunEmitter) -> None:
        await end_lost(self.s, run, "the run was interrupted: its worker was lost, or could not record it (store "
                                    "unavailable)", emitter)
        await self._release(run)
        await self.s.queue.ack(job)

    async def _end_on_shutdown(self, run: Run, emitter: RunEmitter) -> bool:
        """End a run whose worker stops under it, at once (as a lost run: it is never re-run). False if
        that could not be stored: its job then stays, and another worker ends it after the visibility timeout."""
        run = dataclasses.replace(run, worker_id=self.worker_id)  # (read before start_run named this worker)
        try:
            await asyncio.wait_for(end_lost(self.s, run, "the run was interrupted: its worker shut down", emitter),
                                   3 * SHUTDOWN_END_S)
        except Exception:
            log.warning("run %s: could not be ended on shutdown; another worker ends it", run.id, exc_info=True)
            return False
        return True

    async def _extend(self, run_id: str) -> None:
        job = self._leases.get(run_id)  # the delivery held now (one that came back is adopted)
        if job is not None:
            await self.s.queue.extend(job)

    async def _heartbeat(self, lease: RunLease) -> None:
        every = max(0.05, self.settings.queue_visibility_s / 3)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):  # a lease the store says is lost stays so: its calls are refused
                await lease.renew()

    async def _release(self, run: Run) -> None:
        with contextlib.suppress(Exception):
            await self.s.ledger.release_run(run.tenant_id, run.id)

    async def _fail(self, emitter: RunEmitter, code: str, message: str, **extra: Any) -> None:
        await emitter.finish("failed", {"code": code, "message": message, **extra}, ended_at=time.time(),
                             error_code=code, error_message=message)

    async def _execute(self, run: Run, emitter: CountedEmitter, state: dict[str, bool]) -> None:
        s = self.s
        try:  # the tenant's version, else the platform's (get looks in both)
            version = await self.registry.get(run.tenant_id, run.bundle, run.bundle_version)
        except StockadeError as exc:
            await self._fail(emitter, exc.code, exc.public_detail)
            return
        state["starting"] = True
        if await s.runs.start_run(run.tenant_id, run.id, worker_id=self.worker_id, started_at=time.time()) is None:
            return  # canceled while queued, or another worker took it (a second job for the same run)
        state["started"] = True
        emitter.started_mono = time.monotonic()
        self.metrics.runs_active.inc()
        await emitter.emit("run.started", {"bundle": run.bundle, "bundle_version": run.bundle_version})
        manifest = version.manifest
        manifest_limits = _dump(getattr(manifest, "limits", None))
        try:
            limits, timeout = limits_for(self.settings, manifest_limits)
            session_caps = {"max_output": limits.max_output_bytes,
                            "events_per_s": events_per_s_for(self.settings, manifest_limits)}
        except StockadeError as exc:
            await self._fail(emitter, exc.code, exc.public_detail)
            return
        slot = self.warm.take() if self.warm is not None and self.warm.eligible(manifest_limits) else None
        if slot is not None:
            uid, gid, dirs = slot.uid, slot.gid, slot.dirs
        else:
            uid = self.uid_pool.acquire() if self.uid_pool is not None else None
            gid = uid
            dirs = make_run_dirs(self.settings, run.id, uid, gid)
        proc = None
        server = None
        warm_task: asyncio.Task | None = None
        killer: dict[str, str] = {}
        box: dict[str, Any] = {}  # the sandbox process, the task serving its connection
        sessions: list[RunSession] = []
        stopping = False
        try:
            history = []
            if run.conversation_id:
                history = await conversation_history(s.runs, run.tenant_id, run.conversation_id, run.id,
                                                     self.settings.sandbox_max_frame_bytes, run.input)
            binding = Binding(
                tenant_id=run.tenant_id, run_id=run.id, bundle=run.bundle, bundle_version=run.bundle_version,
                project_id=run.project_id, user_id=run.user_id, key_id=run.key_id,
                role=await self._role(run), bundle_policy=self._bundle_policy(version),
                bundle_tools=tuple(getattr(manifest, "tools", None) or ()),
            )
            welcome = {"run_id": run.id, "bundle": run.bundle, "input": run.input, "history": history,
                       "conversation_id": run.conversation_id, "entrypoint": getattr(manifest, "entrypoint", "main.py")}
            launched = asyncio.Event()

            def on_limit(code: str) -> None:
                killer.setdefault("code", code)
                if box.get("proc") is not None:
                    box["proc"].kill()

            async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await launched.wait()
                sock: socket.socket = writer.get_extra_info("socket")
                peer = None
                try:
                    peer = verify_peer(sock, expected_uid=uid, sandbox_pid=box["proc"].pid)
                    if sessions:
                        raise StockadeError("peer.rejected", "the run already has a connection")
                except StockadeError as exc:
                    if peer is not None:
                        peer.close()
                    await self.recorder.record(run.tenant_id, "peer.rejected", run_id=run.id, code="peer.rejected",
                                               detail={"message": exc.detail})
                    writer.close()
                    return
                # the run has its one connection: later connects are refused by the kernel, not each verified and
                # audited here (a bundle's loop of them wrote ~3,000 peer.rejected records a second)
                if server is not None:
                    server.close()
                self.started[run.id] = time.monotonic()
                emitter.sandbox_started("cold")
                sess = RunSession(services=s, chain=self.chain, recorder=self.recorder, binding=binding,
                                  emitter=emitter, welcome=welcome, on_limit=on_limit,
                                  lease=self._fences.get(run.id), **session_caps)
                sessions.append(sess)
                box["serving"] = asyncio.current_task()  # canceled once the run has ended
                try:
                    await sess.serve(reader, writer)
                    await self._stop_when_silent(box, killer)
                except asyncio.CancelledError:  # the run ended (cancel/timeout) while the sandbox was still talking
                    writer.close()
                finally:
                    peer.close()  # the pidfd is held for the connection's lifetime

            if slot is not None:
                proc, server = slot.proc, slot.server
                server.close()  # its one connection is made (as above: no more connects, each logged)
                box["proc"] = proc
                await asyncio.to_thread(copy_bundle, version.path, slot.bundle_dir)
                reader, writer, peer = slot.conn.result()
                self.started[run.id] = time.monotonic()
                emitter.sandbox_started("warm")
                sess = RunSession(services=s, chain=self.chain, recorder=self.recorder, binding=binding,
                                  emitter=emitter, welcome=welcome, on_limit=on_limit,
                                  lease=self._fences.get(run.id), **session_caps)
                sessions.append(sess)

                async def serve_warm() -> None:
                    try:
                        await sess.serve(reader, writer, greeted=True)
                        await self._stop_when_silent(box, killer)
                    finally:
                        peer.close()

                warm_task = asyncio.get_running_loop().create_task(serve_warm())
            else:
                server = await listen_run_socket(on_connect, dirs, self.settings, uid, gid)
                try:
                    spec = build_spec(self.settings, dirs, version.path, {}, limits, uid, gid)
                    proc = await launch(spec, bwrap=self.settings.sandbox_bwrap)
                except (StockadeError, SandboxError) as exc:
                    log.error("run %s: sandbox could not start: %s", run.id, exc.detail)
                    # a SandboxError's detail names host paths (the tenant's message does not): was an
                    # AttributeError here, and every run failed `internal`
                    public = (exc.public_detail if isinstance(exc, StockadeError)
                              else "the sandbox could not start (the server log says why)")
                    await self._fail(emitter, exc.code, public)
                    return
                box["proc"] = proc
                launched.set()
            status, data = await self._supervise(run, proc, timeout, sessions, killer)
            proc.kill()  # nothing of the run may still be calling tools once its reservations are released
            for sess in sessions:  # a call in flight (the run canceled, timed out, crashed) settles and is
                await sess.abort_calls(SHUTDOWN_END_S)  # recorded before the run's end is told (audit, receipt)
            await self._release(run)
            fields: dict[str, Any] = {"ended_at": time.time()}
            if status != "succeeded":
                fields.update(error_code=data.get("code"), error_message=data.get("message"))
            await emitter.finish(status, data, **fields)
        except asyncio.CancelledError:
            stopping = True  # the node is stopping (the only canceller): its stores close next
            raise
        finally:
            if proc is not None:
                proc.kill()
            if stopping:
                for sess in sessions:  # calls in flight settle and record their outcome while they still can
                    await sess.abort_calls(SHUTDOWN_END_S)
            for task in (warm_task, box.get("serving")):
                if task is not None and not task.done():
                    task.cancel()  # a session still reading what a dead sandbox wrote: the run is over
            if server is not None:
                server.close()
            try:
                if proc is not None:
                    await proc.wait()  # its pid namespace gone (milliseconds after kill) before its uid serves another run
                # a run may leave ~100,000 entries (the work-dir scan's cap): ~1 s of rmtree, not on the event loop
                await asyncio.to_thread(dirs.remove)
            finally:
                if uid is not None and self.uid_pool is not None:
                    self.uid_pool.release(uid)

    @staticmethod
    async def _stop_when_silent(box: dict[str, Any], killer: dict[str, str]) -> None:
        """The session has read the sandbox's last frame (its done frame, its hang-up, a bad frame): nothing
        the sandbox does from now on reaches anyone. One still alive after a short grace is stopped, not left
        to run to the time limit - a thread or task the bundle left behind, a bundle that wrote garbage and sleeps."""
        proc = box.get("proc")
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.wait(), DRAIN_MIN_S)
        except TimeoutError:
            killer.setdefault("silent", "1")
            proc.kill()

    async def _supervise(self, run: Run, proc: Any, limit_s: float, sessions: list[RunSession],
                         killer: dict[str, str]) -> tuple[str, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        waiter = asyncio.ensure_future(proc.wait())
        canceled = self.cancels.watch(run.id)
        try:
            done, _ = await asyncio.wait({waiter, canceled}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.cancels.unwatch(run.id)
        if waiter not in done:
            proc.kill()
            exit_info = await waiter
            if canceled in done:
                return "canceled", {"code": "run.canceled", "message": "canceled"}
            return "timed_out", {"code": "run.timed_out", "message": f"the run exceeded its {limit_s:g}s time limit"}
        exit_info = waiter.result()
        drained = True
        if sessions:
            # The sandbox may exit while the supervisor is still working through what it wrote (a
            # burst of emits, a loaded node): the socket holds the rest, done frame included. Read it
            # all, within the run's own time limit; only then does a missing done frame mean a crash.
            try:
                await asyncio.wait_for(sessions[0].read_done.wait(), max(DRAIN_MIN_S, deadline - loop.time()))
            except TimeoutError:
                drained = False
            else:  # calls still in flight get a short grace; their sandbox is gone, so no one awaits them
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(sessions[0].finished.wait(), DRAIN_MIN_S)
        outcome = sessions[0].outcome if sessions else None
        exit_reason = getattr(exit_info, "reason", None)
        if getattr(exit_info, "reason_claimed", False) and outcome is not None and outcome.status is not None:
            # the runtime reported how main ended; an exit status or stderr text after that is the bundle's word
            exit_reason = None
        limit = killer.get("code") or (outcome.limit if outcome else None) or exit_reason
        if limit:
            if limit == "limit.wall":
                return "timed_out", {"code": "run.timed_out", "message": "the run exceeded its time limit"}
            return "failed", {"code": limit, "message": _limit_message(limit)}
        if outcome is not None and outcome.status == "ok":
            return "succeeded", {}
        if outcome is not None and outcome.status == "error":
            # the code is the sandbox's word: one of the table's (a ToolError's, passed on), or none
            code = outcome.code if outcome.code in ERRORS else "run.failed"
            error_type = outcome.error_type or "Error"
            message = f"{error_type}: {outcome.message}" if outcome.message else error_type
            return "failed", {"code": code, "message": message,
                              "error_type": outcome.error_type, "traceback": outcome.traceback}
        if not drained:
            return "timed_out", {"code": "run.timed_out",
                                 "message": f"the run exceeded its {limit_s:g}s time limit (its output was still being read)"}
        tail = (getattr(exit_info, "stderr_tail", b"") or b"").decode(errors="replace")[-2000:]
        message = f"the sandbox exited (code {getattr(exit_info, 'returncode', None)}) without finishing"
        if killer.get("silent"):
            message = "the sandbox stopped talking to the supervisor without finishing, and was stopped"
        return "failed", {"code": "sandbox.crashed", "message": message, "stderr": tail}

    async def _role(self, run: Run) -> str:
        if not run.key_id:
            return "member"
        with contextlib.suppress(Exception):
            for k in await self.s.tenants.list_keys(run.tenant_id):
                if k.id == run.key_id:
                    return k.role
        return "member"

    def _bundle_policy(self, version: Any) -> Any:
        raw = getattr(version.manifest, "policy", None)
        if not raw or self.bundle_policy_loader is None:
            return None
        # stored: a version registered before a newer check (an unknown role, a price bound) still runs as it did
        return self.bundle_policy_loader(_dump(raw), source=f"bundle {version.name}", stored=True)


def _dump(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return obj.model_dump(exclude_none=True)
    return obj


def _limit_message(code: str) -> str:
    return {
        "limit.memory": "the sandbox ran out of memory",
        "limit.cpu": "the sandbox used up its CPU time",
        "limit.output": "the run emitted more output than allowed",
        "limit.events": "the run emitted events faster than allowed",
        "limit.disk": "the sandbox exceeded its file size limit",
        "frame.invalid": "the sandbox sent a frame the supervisor refuses (the audit log says which)",
        "frame.too_large": "the sandbox sent a frame larger than the frame cap",
        "internal": "the supervisor could not handle a frame of the sandbox",
        "store.unavailable": "the run's events could not be stored (the store was unavailable), so it was stopped",
    }.get(code, code)
