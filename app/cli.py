"""``stockade``: one CLI for servers and operators. Errors: one line on stderr, non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from supervisor.errors import StockadeError
from supervisor.settings import Settings, SettingsError, load_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stockade", description="Self-hosted runtime for AI agents.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, helptext in (("serve", "all-in-one server (API + workers)"), ("api", "API replica"), ("worker", "worker replica")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--host")
        sp.add_argument("--port", type=int)
        sp.add_argument("--data-dir")
    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser("demo", help="create the demo tenant if none exists and print its key")
    t = sub.add_parser("tenant", help="tenants").add_subparsers(dest="sub", required=True)
    tc = t.add_parser("create")
    tc.add_argument("name")
    tc.add_argument("--budget-usd", type=float)
    t.add_parser("list", help="every tenant (JSON lines)")
    k = sub.add_parser("key", help="API keys").add_subparsers(dest="sub", required=True)
    kl = k.add_parser("list", help="a tenant's keys (JSON lines; never a secret)")
    kl.add_argument("--tenant", required=True, help="tenant id or name")
    kr = k.add_parser("revoke", help="revoke a key (a lost or leaked one, even the tenant's last admin key)")
    kr.add_argument("key_id")
    kr.add_argument("--tenant", required=True, help="tenant id or name")
    kc = k.add_parser("create")
    kc.add_argument("--tenant", required=True, help="tenant id or name")
    kc.add_argument("--role", default="member", choices=["admin", "member", "approver", "viewer"])
    kc.add_argument("--user")
    kc.add_argument("--project")
    b = sub.add_parser("bundle", help="bundles").add_subparsers(dest="sub", required=True)
    bp = b.add_parser("push")
    bp.add_argument("dir")
    bp.add_argument("--tenant", required=True, help="tenant id or name")
    pol = sub.add_parser("policy", help="policies").add_subparsers(dest="sub", required=True)
    pv = pol.add_parser("validate")
    pv.add_argument("file")
    a = sub.add_parser("audit", help="audit log").add_subparsers(dest="sub", required=True)
    av = a.add_parser("verify")
    av.add_argument("--tenant", help="tenant id or name (default: every tenant)")
    av.add_argument("--anchor", action="append", default=[], metavar="FILE",
                    help="a chain head kept elsewhere (an earlier `audit verify` output, or a run receipt): "
                         "fails if the chain no longer holds it (its tail was cut off); repeatable")
    r = sub.add_parser("receipt", help="run receipts").add_subparsers(dest="sub", required=True)
    rv = r.add_parser("verify")
    rv.add_argument("file", help="receipt JSON (- for stdin)")
    rv.add_argument("--public-key", required=True, help="PEM file of the published key")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for attr, key in (("host", "host"), ("port", "port"), ("data_dir", "data_dir")):
        v = getattr(args, attr, None)
        if v is not None:
            overrides[key] = v
    try:
        if args.cmd == "policy":
            return _policy_validate(args.file)
        if args.cmd == "receipt":
            return _receipt_verify(args.file, args.public_key)
        settings = load_settings(**overrides)
        if args.cmd in ("serve", "api", "worker"):
            from app.server import run, run_server

            try:
                run(run_server(settings, api=args.cmd != "worker", workers=args.cmd != "api"))
            except KeyboardInterrupt:
                pass
            return 0
        return asyncio.run(_admin(settings, args))
    except KeyboardInterrupt:  # Ctrl-C: what was committed stays, nothing half-done is published
        print("stockade: interrupted", file=sys.stderr)
        return 130
    except SettingsError as exc:
        return _fail(str(exc))
    except StockadeError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except (OSError, ValueError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # the contract: one line, no traceback -- even for what we did not foresee
        return _fail(f"internal: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unexpected error'}")


def _fail(msg: str) -> int:
    print(f"stockade: {msg}", file=sys.stderr)
    return 1


async def _tenant_id(services: Any, ref: str) -> str:
    t = await services.tenants.get_tenant(ref) or await services.tenants.get_tenant_by_name(ref)
    if t is None:
        raise StockadeError("not_found", f"no tenant {ref!r}")
    return t.id


async def _admin(settings: Settings, args: argparse.Namespace) -> int:
    from supervisor.runtime import open_runtime
    from supervisor.tenancy import create_key, create_tenant

    anchors: list[Any] = []
    if args.cmd == "audit":  # bad anchor files are refused before anything is opened
        from supervisor.audit.anchors import anchors_in

        try:
            for path in args.anchor:
                anchors += anchors_in(_read_capped(path, _MAX_RECEIPT_BYTES, f"anchor file {path}"), path)
        except OSError as exc:
            raise StockadeError("input.invalid", f"cannot read {exc.filename}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise StockadeError("input.invalid", str(exc)) from None
    rt = await open_runtime(settings)
    s = rt.services
    try:
        if args.cmd == "migrate":
            print(json.dumps({"migrated": True, "database": "postgresql" if settings.uses_postgres else str(settings.sqlite_path)}))
            return 0
        if args.cmd == "demo":
            return await _demo(rt, settings)
        if args.cmd == "tenant" and args.sub == "list":
            for t in await s.tenants.list_tenants():
                print(json.dumps({"tenant_id": t.id, "name": t.name, "created_at": t.created_at}))
            return 0
        if args.cmd == "tenant":
            tenant, key = await create_tenant(s, args.name, budget_usd=args.budget_usd)
            print(json.dumps({"tenant_id": tenant.id, "name": tenant.name, "api_key": key.secret}))
            return 0
        if args.cmd == "key" and args.sub == "list":
            tid = await _tenant_id(s, args.tenant)
            for k in await s.tenants.list_keys(tid):
                print(json.dumps({"key_id": k.id, "prefix": k.prefix, "role": k.role, "user_id": k.user_id,
                                  "project_id": k.project_id, "created_at": k.created_at, "revoked_at": k.revoked_at}))
            return 0
        if args.cmd == "key" and args.sub == "revoke":
            tid = await _tenant_id(s, args.tenant)
            if not await s.tenants.revoke_key(tid, args.key_id):
                key = next((k for k in await s.tenants.list_keys(tid) if k.id == args.key_id), None)
                if key is None:
                    raise StockadeError("not_found", f"no key {args.key_id!r} in tenant {tid}")
                # already revoked: what was asked holds (a retried command succeeds)
            print(json.dumps({"tenant_id": tid, "key_id": args.key_id, "revoked": True}))
            return 0
        if args.cmd == "key":
            tid = await _tenant_id(s, args.tenant)
            nk = await create_key(s, tid, args.role, user_id=args.user, project_id=args.project)
            print(json.dumps({"tenant_id": tid, "key_id": nk.key.id, "role": nk.key.role, "api_key": nk.secret}))
            return 0
        if args.cmd == "bundle":
            tid = await _tenant_id(s, args.tenant)
            src = Path(args.dir)
            if not src.is_dir():  # noqa: ASYNC240 - one stat in a CLI command
                raise StockadeError("bundle.invalid", f"{src} is not a directory")
            v = await rt.registry.register_dir(src, tid)
            print(json.dumps({"name": v.name, "version": v.version, "digest": v.digest, "tenant_id": tid}))
            return 0
        if args.cmd == "audit":
            return await _audit_verify(rt, args.tenant, anchors)
    finally:
        await rt.stop()
    return 2


async def _demo(rt: Any, settings: Settings) -> int:
    from supervisor.tenancy import create_key, create_tenant

    s = rt.services
    tenant = await s.tenants.get_tenant_by_name("demo")
    if tenant is None:
        tenant, nk = await create_tenant(s, "demo", budget_usd=10.0)
    else:
        nk = await create_key(s, tenant.id, "admin")
    url = f"http://{settings.host}:{settings.port}"
    print(f"\nStockade is starting on {url}  (web UI: {url}/ui/)")
    print(f"demo tenant {tenant.id}; API key (shown once): {nk.secret}\n")
    print(f"  curl -s -X POST {url}/v1/runs -H 'Authorization: Bearer {nk.secret}' "
          f"-H 'Content-Type: application/json' -d '{{\"bundle\":\"echo\",\"input\":\"hello stockade\"}}'")
    print(f"  curl -N {url}/v1/runs/<run id>/events -H 'Authorization: Bearer {nk.secret}'\n", flush=True)
    return 0


async def _audit_verify(rt: Any, tenant_ref: str | None, anchors: list[Any]) -> int:
    from supervisor.audit.chain import ChainVerifier

    s = rt.services
    tenants = [await _tenant_id(s, tenant_ref)] if tenant_ref else await s.audit.tenants()
    if not tenant_ref:  # an anchored tenant whose records are all gone is not among those with records
        tenants += sorted({a.tenant_id for a in anchors} - set(tenants))
    total, heads, checked = 0, {}, 0
    for tid in tenants:
        head, head_problem = None, None
        try:
            head = await s.audit.head(tid)  # before the records: what the server appends meanwhile is no gap
        except StockadeError as exc:  # PostgreSQL's head row disagrees with the log: named after the records
            if exc.code != "audit.corrupt":
                raise
            head_problem = exc.detail
        verifier = ChainVerifier(tid, rt.sealer)  # page by page: constant memory, however long the chain
        pinned: dict[int, list[Any]] = {}  # two anchor files may pin one seq (and disagree): each is checked
        for a in anchors:
            if a.tenant_id == tid:
                pinned.setdefault(a.seq, []).append(a)
                checked += 1
        brk = None
        while brk is None:
            page = await s.audit.list(tid, after_seq=verifier.last_seq, limit=1000)
            for rec in page:
                if (brk := verifier.feed(rec)) is not None:
                    break
                a = next((a for a in pinned.get(rec.seq, ()) if rec.hash != a.hash), None)
                if a is not None:
                    brk = f"tenant {tid}: record {rec.seq}: not the record anchored in {a.source} (chain replaced)"
                    break
            total += len(page)
            if len(page) < 1000:
                break
            await asyncio.sleep(0)  # the embedded store never suspends: let Ctrl-C (task cancellation) in
        if brk is not None:
            print(f"stockade: audit chain broken: {brk}", file=sys.stderr)
            return 1
        if head_problem is not None:
            print(f"stockade: audit chain broken: tenant {tid}: records end at {verifier.last_seq} but {head_problem}",
                  file=sys.stderr)
            return 1
        if head is not None and verifier.last_seq < head.seq:
            print(f"stockade: audit chain broken: tenant {tid}: records end at {verifier.last_seq} but the head is {head.seq} (records deleted)", file=sys.stderr)
            return 1
        cut = [a for seq, pins in pinned.items() if seq > verifier.last_seq for a in pins]
        if cut:
            a = max(cut, key=lambda x: x.seq)
            print(f"stockade: audit chain broken: tenant {tid}: records end at {verifier.last_seq} but {a.source} "
                  f"anchors record {a.seq} (records deleted from the end)", file=sys.stderr)
            return 1
        if verifier.last_seq:  # the last record verified (not the head read before: records came since)
            heads[tid] = {"seq": verifier.last_seq, "hash": verifier.prev_hash}
    # "heads" is an anchor file for a later run (--anchor): keep it where the database's writers cannot reach
    print(json.dumps({"verified": True, "tenants": len(tenants), "records": total, "anchors": checked,
                      "heads": heads}))
    return 0


def _policy_validate(path: str) -> int:
    from supervisor.policy.cli import validate_main

    return validate_main(path)


_MAX_RECEIPT_BYTES = 256 * 1024 * 1024  # also anchor files: receipts are anchors too
_MAX_KEY_BYTES = 64 * 1024


def _read_capped(path: str, cap: int, what: str) -> bytes:
    """At most ``cap`` bytes of ``path`` (``-``: stdin): never read /dev/zero or a stray huge file whole."""
    if path == "-":
        data = sys.stdin.buffer.read(cap + 1)
    else:
        with open(path, "rb") as fh:
            data = fh.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"the {what} is larger than {cap} bytes")
    return data


def _receipt_verify(path: str, key_path: str) -> int:
    from supervisor.audit.receipts import load_receipt, verify_receipt

    try:
        data = _read_capped(path, _MAX_RECEIPT_BYTES, "receipt")
        pem = _read_capped(key_path, _MAX_KEY_BYTES, "public key")
    except OSError as exc:
        return _fail(f"cannot read {exc.filename or path}: {exc.strerror or exc}")
    except ValueError as exc:
        return _fail(str(exc))
    try:
        receipt = load_receipt(data)  # a member written twice: refused (other readers keep the other one)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        return _fail(f"the receipt is not JSON: {str(exc).splitlines()[0] if str(exc) else 'nested too deeply'}")
    try:
        valid = verify_receipt(receipt, pem)
    except ValueError:
        return _fail(f"public key {key_path} is not a PEM public key")
    if not valid:
        return _fail("receipt signature is INVALID")
    print(json.dumps({"valid": True, "run_id": receipt.get("run_id"), "spans": len(receipt.get("spans", []))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
