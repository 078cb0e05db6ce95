"""Step 2: the policy decides (tenant layer, narrowed by the bundle layer); fails closed.

Inputs: the tenant's stored policy (``services.policies``; none -> the
shipped default), parsed once per version and kept in a small LRU cache (the
cached text is compared too, so a store that mislabels a version can never
serve another document's rules); the bundle layer from the binding; the
resolved resource from the validation step; and the run's call history,
kept here in memory.

History semantics (what velocity and order count):

* a call is recorded when it passes policy (before any delay or approval),
  so concurrent calls of a run see each other - velocity cannot be beaten by
  firing calls in parallel, and ``not_after`` counts an attempt as soon as it
  was let through;
* ``after: A`` needs A to have *completed* (returned a result): A that was
  denied, rejected by an approver or failed does not unlock B;
* a call is counted (velocity) under its own name - ``mcp.<server>.<tool>``
  whichever spelling the bundle used - and seen / completed (order) under
  every name it has (its aliases too: ``mcp.call``).

Where histories live: a run is served by one worker, so its history lives in
this process and per-run velocity and order are exact. A user's runs are
served by any worker: with ``services.velocity`` (production, Redis:
supervisor/stores/redis/velocity.py) per-user velocity counts the calls of
every node - the history is read, the call judged, and recorded only if no
other node recorded one of that user and tool meanwhile, else judged again.
Without it (the embedded stack, one process) this process's history is the
user's; with it, this process keeps no user history at all. A redirect hop
reads the same history as its call. Memory is bounded: ``max_runs`` runs
and, per tenant, ``max_users`` users (least recently used; a tenant evicts
only its own users), each at most ``MAX_VELOCITY`` timestamps per tool.
Evicting a run forgets its history (``forget_run`` drops it when the run ends).

A downgraded call is judged again with its replaced arguments (and the
resource they resolve to) before it is recorded: the call that runs is one
the policy allows, whichever layer asked for the downgrade. A redirect hop
(``recheck_resource``) is judged with the run's history too.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from supervisor.audit.canonical import args_hash
from supervisor.chain.base import CallState, Next
from supervisor.errors import StockadeError
from supervisor.policy import (
    RESTRICTIVENESS,
    Policy,
    PolicyError,
    PolicyRequest,
    Verdict,
    default_policy,
    evaluate_layers,
    is_valid_tool_name,
    load_policy,
)
from supervisor.policy.conditions import strict_eq
from supervisor.policy.evaluate import stricter_terms
from supervisor.policy.schema import MAX_VELOCITY

__all__ = ["NO_MATCH_RULE", "PolicyInterceptor"]

log = logging.getLogger("stockade.policy")

# What a deny no rule matched names as its rule (audit record, tool.result event, receipt, ToolError.extra), as an
# undeclared tool names "bundle.tools": every verdict names what decided it (CONTRACT.md)
NO_MATCH_RULE = "policy.no_match"
SHARED_TRIES = 16  # judgements of one call against a shared user history another node kept changing
OFFLOAD_CHARS = 64 * 1024  # argument text above which a policy with regex rules is evaluated on a thread
OFFLOAD_POLICY_CHARS = 16 * 1024  # a stored policy longer than this is parsed on a thread (512 KiB: ~1.5 s)


@dataclass
class _Log:
    """One run's (or one principal's) history: per-tool timestamps plus the tool sets order needs."""

    per_tool: dict[str, deque[tuple[str, float]]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # passed policy
    completed: set[str] = field(default_factory=set)  # returned a result
    # Decide-and-record is atomic per run (and per user), also when the evaluation runs on a thread.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def of(self, tool: str) -> deque[tuple[str, float]]:
        d = self.per_tool.get(tool)
        if d is None:
            # Velocity needs at most MAX_VELOCITY of a tool's newest timestamps; other tools
            # have their own deques, so a flood of cheap calls cannot push these out.
            d = self.per_tool[tool] = deque(maxlen=MAX_VELOCITY)
        return d


class _Lru(OrderedDict[Any, _Log]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def touch(self, key: Any) -> _Log:
        entry = self.get(key)
        if entry is None:
            entry = self[key] = _Log()
            while len(self) > self.limit:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return entry


class PolicyInterceptor:
    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        max_runs: int = 4096, max_users: int = 4096, max_tenants: int = 1024, cache_size: int = 128,
        stored_ttl_s: float = 1.0,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._runs = _Lru(max_runs)
        # Per tenant: a tenant calling as thousands of users (or keys) evicts only its own users' histories,
        # never another tenant's (their per-user velocity would silently start from zero).
        self._users: OrderedDict[str, _Lru] = OrderedDict()
        self._max_users = max_users
        self._max_tenants = max_tenants
        self._cache: OrderedDict[str, tuple[str, Policy]] = OrderedDict()
        self._loading: dict[str, tuple[str, asyncio.Future[Policy]]] = {}  # version -> a parse in progress
        self._cache_size = cache_size
        # The tenant's stored document, re-read at most every ``stored_ttl_s``: one store round trip per
        # call was a whole PostgreSQL transaction. A PUT through this process invalidates at once
        # (forget_tenant); other processes see it within the TTL.
        self._stored_ttl_s = stored_ttl_s
        self._stored: OrderedDict[str, tuple[float, tuple[str, str] | None]] = OrderedDict()
        self._forgets = 0  # forget_tenant calls so far: a read in flight across one must not be cached

    def forget_tenant(self, tenant_id: str) -> None:
        """The tenant's policy changed: read it again on the next call."""
        self._stored.pop(tenant_id, None)
        self._forgets += 1

    def forget_run(self, tenant_id: str, run_id: str) -> None:
        """Drop a finished run's history."""
        self._runs.pop((tenant_id, run_id), None)

    async def __call__(self, call: CallState, next: Next) -> dict[str, Any]:
        b = call.binding
        tool = call.tool_name
        if not is_valid_tool_name(call.called_as if call.called_as is not None else tool):
            # Refused, never normalised: "Echo", "ｅcho", "e\u200dcho" must not reach an echo rule.
            raise StockadeError("input.invalid", "tool names are 1-128 characters of a-z 0-9 _ . - (ASCII)")
        names = call.names()  # what order rules see of this call once it passed (seen) or completed
        tenant = await self._tenant_policy(call)
        bundle = b.bundle_policy
        if bundle is not None and not isinstance(bundle, Policy):
            raise self._unavailable(call, "the bundle's policy layer is not a compiled policy")
        call.policy_version = tenant.version
        call.extra["prices"] = dict(tenant.prices)
        call.extra["llm_prices"] = {k: dict(v) for k, v in tenant.llm_prices.items()}
        call.extra["rate_overrides"] = dict(tenant.limits)

        run = self._runs.touch((b.tenant_id, b.run_id))
        args = _args_of(call)
        counts = tenant.has_velocity or (bundle is not None and bundle.has_velocity)
        # With a shared log (production) that log is the user's history: this process keeps none, only the
        # user's lock while rules count calls. Kept here too, it was written on every call and never read -
        # up to MAX_VELOCITY timestamps per tool for each of max_users users of each of max_tenants tenants.
        keeps_users = getattr(call.services, "velocity", None) is None
        user = self._user_log(b.tenant_id, _principal(b)) if keeps_users or counts else _Log()
        # Per user too when rules count calls: two runs of one user must not both judge against a user history
        # without the other's call (an evaluation on a thread yields the loop). Always run lock, then user lock.
        # Per-user history shared by every node (production: Redis), read and judged again if another node
        # recorded a call of this user meanwhile; without it, this process's own history.
        per_user = tenant.has_user_velocity or (bundle is not None and bundle.has_user_velocity)
        shared = getattr(call.services, "velocity", None) if per_user else None
        async with run.lock, (user.lock if counts else contextlib.nullcontext()):
            for _ in range(SHARED_TRIES):
                if shared is not None:
                    version, ages = await shared.read(b.tenant_id, _principal(b), tool)
                now = self._clock()
                # Snapshots: the engine may run on a thread while other calls append. Histories (up to
                # MAX_VELOCITY entries each) are copied only when some rule counts calls.
                if shared is not None:
                    user_history: tuple[tuple[str, float], ...] = tuple((tool, now - age) for age in ages)
                else:
                    user_history = tuple(user.of(tool)) if counts else ()
                req = PolicyRequest(
                    tool=tool, args=args, resource=call.resource, role=b.role, user=b.user_id,
                    project=b.project_id, history=tuple(run.of(tool)) if counts else (),
                    user_history=user_history, now=now, seen=frozenset(run.seen), completed=frozenset(run.completed),
                    aliases=call.aliases, called_as=call.called_as,
                )
                v = await self._evaluate(call, tenant, bundle, req)
                call.verdict, call.rule_id, call.reason = v.verdict, v.rule_id, v.reason
                call.extra["policy_layer"] = v.layer
                call.extra["approval_terms"] = v.approval  # require_approval: how it is decided (chain/approval.py)
                if v.verdict == "deny":
                    raise self._deny(call, v.reason or "denied by policy", v)
                if v.replacements:
                    v = await self._downgrade(call, tenant, bundle, req, v)
                    call.verdict, call.rule_id, call.reason = v.verdict, v.rule_id, v.reason
                    call.extra["policy_layer"] = v.layer
                    call.extra["approval_terms"] = v.approval
                if shared is None or await shared.record(b.tenant_id, _principal(b), tool, version):
                    break
            else:
                raise self._unavailable(call, "the user's call history kept changing under other nodes' calls")
            run.of(tool).append((tool, now))
            run.seen.update(names)
            if keeps_users:
                user.of(tool).append((tool, now))
            call.extra["policy_at"] = now  # a redirect hop of this call must not count the call itself
        if v.delay_s > 0:
            call.extra["delayed_s"] = v.delay_s
            await self._sleep(v.delay_s)
        result = await next(call)
        run.completed.update(names)
        return result

    async def _evaluate(self, call: CallState, tenant: Policy, bundle: Policy | None, req: PolicyRequest) -> Verdict:
        try:
            if (tenant.has_patterns or (bundle is not None and bundle.has_patterns)) and _large(req.args):
                # Regex work grows with the arguments; RE2 releases the GIL, so the loop stays free.
                return await asyncio.to_thread(evaluate_layers, tenant, bundle, req)
            return evaluate_layers(tenant, bundle, req)
        except Exception as exc:  # an engine bug must not open the door
            log.exception("policy evaluation failed")
            raise self._unavailable(call, "the policy could not be evaluated") from exc

    def _user_log(self, tenant_id: str, principal: str) -> _Log:
        users = self._users.get(tenant_id)
        if users is None:
            users = self._users[tenant_id] = _Lru(self._max_users)
            while len(self._users) > self._max_tenants:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(tenant_id)
        return users.touch(principal)

    async def recheck_resource(self, call: CallState, resource: str) -> None:
        """A tool's later hop (an HTTP redirect) must pass the same policy as its first URL.

        Only ``allow`` and ``delay`` (after waiting) let the hop through: a redirect cannot wait for a
        human, so a hop that would need approval (or a downgrade) is denied.
        """
        b = call.binding
        tenant = await self._tenant_policy(call)
        # The hop is judged with the run's history (an order rule "never http to X after secrets.read" must
        # not be dodged by a URL that redirects to X), minus the call's own record.
        tool = call.tool_name
        bundle = b.bundle_policy if isinstance(b.bundle_policy, Policy) else None
        run = self._runs.get((b.tenant_id, b.run_id)) or _Log()
        own = (tool, call.extra.get("policy_at"))
        now = self._clock()
        shared = None
        if tenant.has_user_velocity or (bundle is not None and bundle.has_user_velocity):
            shared = getattr(call.services, "velocity", None)
        if shared is not None:  # the user's calls on every node (read only: a hop is no new call)
            _, ages = await shared.read(b.tenant_id, _principal(b), tool)
            user_history = _without_nearest([(tool, now - age) for age in ages], own)
        else:
            users = self._users.get(b.tenant_id)
            user = (users.get(_principal(b)) if users is not None else None) or _Log()
            user_history = _without(user.of(tool), own)
        req = PolicyRequest(
            tool=tool, args=_args_of(call), resource=resource, role=b.role, user=b.user_id,
            project=b.project_id, history=_without(run.of(tool), own), user_history=user_history,
            now=now, seen=frozenset(run.seen), completed=frozenset(run.completed),
            aliases=call.aliases, called_as=call.called_as,
        )
        v = evaluate_layers(tenant, bundle, req)
        if v.verdict not in ("allow", "delay"):
            # the call's outcome is this hop's refusal: its record, event and receipt name the rule that refused
            # it (policy.no_match when none matched), not the first hop's allow, and the resource refused
            call.resource = resource
            raise self._deny(call, f"redirect to {resource} is not allowed by policy ({v.reason or v.verdict})", v)
        if v.delay_s > 0:  # a delay rule of the hop's resource holds the hop like it holds a first request
            await self._sleep(v.delay_s)

    async def _stored_policy(self, call: CallState, tenant_id: str) -> tuple[str, str] | None:
        now = time.monotonic()
        hit = self._stored.get(tenant_id)
        if hit is not None and now - hit[0] < self._stored_ttl_s:
            return hit[1]
        forgets = self._forgets
        stored = await call.services.policies.get(tenant_id)
        if forgets != self._forgets:
            return stored  # a PUT landed during the read: this answer may predate it, so it is not kept
        self._stored[tenant_id] = (now, stored)
        self._stored.move_to_end(tenant_id)
        while len(self._stored) > self._cache_size * 8:
            self._stored.popitem(last=False)
        return stored

    async def _tenant_policy(self, call: CallState) -> Policy:
        tenant_id = call.binding.tenant_id
        try:
            stored = await self._stored_policy(call, tenant_id)
        except Exception as exc:
            log.warning("policy store failed for tenant %s: %r", tenant_id, exc)
            raise self._unavailable(call, "the tenant's policy could not be read") from exc
        if stored is None:
            try:
                return default_policy()
            except PolicyError as exc:  # a broken shipped file: refuse every call rather than guess
                log.error("shipped default policy is invalid: %s", exc.errors)
                raise self._unavailable(call, "the default policy is invalid") from None
        text, version = stored
        hit = self._cache.get(version)
        if hit is not None and hit[0] == text:
            self._cache.move_to_end(version)
            return hit[1]
        try:
            policy = await self._load(text, version)
        except PolicyError as exc:
            log.error("stored policy of tenant %s is invalid: %s", tenant_id, exc.errors[:3])
            raise self._unavailable(call, "the tenant's stored policy is invalid") from None
        self._cache[version] = (text, policy)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return policy

    async def _load(self, text: str, version: str) -> Policy:
        """Parse a stored document: a large one on a thread (a 512 KiB policy takes ~1.5 s, which would
        freeze every run on this worker), and once however many calls are waiting for it."""
        if len(text) <= OFFLOAD_POLICY_CHARS:
            return load_policy(text, source="tenant policy", stored=True)
        pending = self._loading.get(version)
        if pending is None or pending[0] != text:
            fut = asyncio.ensure_future(asyncio.to_thread(load_policy, text, source="tenant policy", stored=True))
            pending = self._loading[version] = (text, fut)

            def done(f: asyncio.Future[Policy], version: str = version) -> None:
                if self._loading.get(version, (None, None))[1] is f:
                    del self._loading[version]
                if not f.cancelled():
                    f.exception()  # retrieved: every waiter may have gone (their runs ended)
            fut.add_done_callback(done)
        return await asyncio.shield(pending[1])

    async def _downgrade(self, call: CallState, tenant: Policy, bundle: Policy | None, req: PolicyRequest,
                         v: Verdict) -> Verdict:
        """Apply the replacements, then judge the downgraded call afresh: it is the call that will run.

        A bundle's downgrade cannot turn a call into one the tenant denies or makes wait for a human, and a
        replacement that moves the call (llm.chat's resource is its model; a storage path) is judged at the
        resource it now points to. Replacements that do not settle (rules rewriting each other) deny.
        """
        repl = copy.deepcopy(dict(v.replacements))  # never hand the rule's own objects to a tool
        old_raw = call.raw_args if isinstance(call.raw_args, dict) else {}
        new_raw = {**old_raw, **repl}
        new_args = call.args
        model = getattr(call.tool, "args_model", None)
        if model is not None:
            try:  # replacements go through the tool's schema like any argument
                new_args = model.model_validate(new_raw)
            except ValidationError as exc:
                raise self._deny(call, f"downgrade by rule {v.rule_id} produced invalid arguments: "
                                       f"{exc.errors()[0].get('msg')}", v) from None
        elif new_args is not None and hasattr(new_args, "model_copy"):
            new_args = new_args.model_copy(update=repl)
        resource = call.resource
        if call.tool is not None and new_args is not None:
            resource = call.tool.resource(new_args, call.tool_ctx)
        dumped = new_args.model_dump(by_alias=True) if hasattr(new_args, "model_dump") else new_raw
        again = await self._evaluate(call, tenant, bundle, dataclasses.replace(req, args=dumped, resource=resource))
        if again.verdict == "deny":
            moved = f" (resource {resource!r:.200})" if resource != call.resource else ""
            raise self._deny(call, f"downgrade by rule {v.rule_id} makes a call{moved} the policy denies: "
                                   f"{again.reason or 'denied by policy'}", again)
        if any(k not in new_raw or not strict_eq(new_raw[k], val) for k, val in again.replacements.items()):
            raise self._deny(call, f"downgrade by rule {v.rule_id} does not settle: rule {again.rule_id} "
                                   "would change the arguments again", again)
        call.extra["downgraded"] = {
            "rule_id": v.rule_id, "layer": v.layer,
            "args": {k: {"from": _brief(old_raw.get(k)), "to": _brief(val)} for k, val in repl.items()},
        }
        call.raw_args, call.args, call.resource = new_raw, new_args, resource
        if call.args_hash is not None:  # approvals bind to (and idempotency derives from) the call that runs
            call.args_hash = args_hash(call.tool_name, new_raw)
        tokens = getattr(call.tool, "estimate_tokens", None)
        if tokens is not None and new_args is not None:  # the token-rate limit charges the call that will run
            call.extra["llm_tokens"] = int(tokens(new_args))
        strict = again if RESTRICTIVENESS[again.verdict] > RESTRICTIVENESS[v.verdict] else v
        if v.verdict == again.verdict == "require_approval" and stricter_terms(again.approval, v.approval):
            strict = again  # the downgraded call asks for more people (or for separation): its rule decides how
        # the terms go with the verdict: a require_approval without them was refused policy.unavailable
        return Verdict(strict.verdict, strict.rule_id, strict.reason, strict.layer,
                       delay_s=max(v.delay_s, again.delay_s), replacements=v.replacements, approval=strict.approval)

    @staticmethod
    def _deny(call: CallState, reason: str, v: Verdict) -> StockadeError:
        # no rule matched (first match wins, no match = deny): the verdict still names what decided it
        rule_id = v.rule_id if v.rule_id is not None else NO_MATCH_RULE
        call.verdict, call.rule_id, call.reason = "deny", rule_id, reason
        call.outcome = "tool.denied"
        return StockadeError("policy.denied", reason, rule_id=rule_id, layer=v.layer)

    @staticmethod
    def _unavailable(call: CallState, why: str) -> StockadeError:
        call.outcome = "policy.unavailable"
        return StockadeError("policy.unavailable", f"{why}; the call was not run")


def _principal(b: Any) -> str:
    if b.user_id:
        return "u." + b.user_id
    if b.key_id:
        return "k." + b.key_id
    return "r." + b.run_id


def _without_nearest(entries: list[tuple[str, float]], own: tuple[str, Any]) -> tuple[tuple[str, float], ...]:
    """The shared history minus the entry nearest in time to ``own``: the checked call's own record, timed
    by the Redis server's clock (so not equal to this node's timestamp)."""
    at = own[1]
    if at is not None and entries:
        del entries[min(range(len(entries)), key=lambda i: abs(entries[i][1] - at))]
    return tuple(entries)


def _without(entries: Sequence[tuple[str, float]], own: tuple[str, Any]) -> tuple[tuple[str, float], ...]:
    """``entries`` minus the newest occurrence of ``own`` (the checked call's own record)."""
    out = list(entries)
    for i in range(len(out) - 1, -1, -1):
        if out[i] == own:
            del out[i]
            break
    return tuple(out)


def _args_of(call: CallState) -> Any:
    # The validated arguments, defaults included: what the tool will actually see.
    args = call.args
    if args is not None and hasattr(args, "model_dump"):
        return args.model_dump(by_alias=True)
    return call.raw_args


def _large(args: Any, limit: int = OFFLOAD_CHARS) -> bool:
    """More than ``limit`` characters of text (or a very large structure): worth a thread."""
    total, nodes, todo = 0, 0, [args]
    while todo:
        v = todo.pop()
        nodes += 1
        if nodes > 4096:
            return True
        if isinstance(v, str):
            total += len(v)
            if total > limit:
                return True
        elif isinstance(v, dict):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, list | tuple):
            todo.extend(v)
    return False


def _brief(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float):
        return v
    if isinstance(v, str) and len(v) <= 200:
        return v
    return f"<{type(v).__name__}>"
