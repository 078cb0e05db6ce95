"""``stockade``: one CLI for servers and operators. Errors: one line on stderr, non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

from app.cli_io import _MAX_RECEIPT_BYTES, _fail, _out, _read_capped, _tenant_id, _WarningLines
from app.cli_verify import _audit_verify, _policy_validate, _receipt_verify
from supervisor.errors import StockadeError
from supervisor.settings import Settings, SettingsError, check_role, load_settings
from supervisor.stores.migrations.runner import MigrationError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """A usage error is one line with a stable code, like every other error (not argparse's usage block)."""

    def error(self, message: str) -> NoReturn:
        _fail(f"input.invalid: {message} (see: {self.prog} --help)")
        raise SystemExit(2)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        # argparse reports arguments no parser took from the top parser, whose help lists only the subcommands
        # (`receipt verify r.json --public-key a.pem b.pem` said "see: stockade --help"): name the subcommand's
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self._innermost(ns).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def _innermost(self, ns: argparse.Namespace) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(ns, action.dest, None) or "")
                if isinstance(chosen, _Parser):
                    return chosen._innermost(ns)
        return self


def _text(value: str) -> str:
    """A name or id given on the command line: UTF-8 text (bytes that are not arrive as lone surrogates, which no
    store can hold). Paths are left alone: a file name need not be UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not valid UTF-8 text") from None
    return value


_DATA_DIR = "where keys, bundles, run dirs (and SQLite) live (STOCKADE_DATA_DIR)"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stockade", description="Self-hosted runtime for AI agents.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, helptext in (("serve", "all-in-one server (API + workers)"), ("api", "API replica"), ("worker", "worker replica")):
        sp = sub.add_parser(name, help=helptext)
        if name != "worker":  # a worker serves no HTTP: it listens on nothing
            sp.add_argument("--host", type=_text, help="address to listen on (STOCKADE_HOST)")
            sp.add_argument("--port", type=int, help="port to listen on (STOCKADE_PORT)")
        sp.add_argument("--data-dir", help=_DATA_DIR)
    sub.add_parser("migrate", help="apply database migrations").add_argument("--data-dir", help=_DATA_DIR)
    demo = ("make a new admin key for the tenant `demo` (created the first time, with a 10 USD monthly budget) and "
            "print it with the URL `stockade serve` will listen on (given the same --host/--port/--data-dir); every "
            "call makes another key, earlier ones stay valid (`stockade key list --tenant demo`). Refused, making no "
            "key, if that address cannot be listened on")
    dm = sub.add_parser("demo", help=demo, description=demo)
    dm.add_argument("--host", type=_text, help="the address `stockade serve` will listen on (STOCKADE_HOST)")
    dm.add_argument("--port", type=int, help="the port `stockade serve` will listen on (STOCKADE_PORT)")
    dm.add_argument("--data-dir", help=_DATA_DIR)
    t = sub.add_parser("tenant", help="tenants").add_subparsers(dest="sub", required=True)
    tc = t.add_parser("create")
    tc.add_argument("name", type=_text)
    tc.add_argument("--budget-usd", type=float)
    t.add_parser("list", help="every tenant (JSON lines)")
    k = sub.add_parser("key", help="API keys").add_subparsers(dest="sub", required=True)
    kl = k.add_parser("list", help="a tenant's keys (JSON lines; never a secret)")
    kl.add_argument("--tenant", required=True, type=_text, help="tenant id or name")
    kr = k.add_parser("revoke", help="revoke a key (a lost or leaked one, even the tenant's last admin key)")
    kr.add_argument("key_id", type=_text)
    kr.add_argument("--tenant", required=True, type=_text, help="tenant id or name")
    kc = k.add_parser("create", help="a new API key (JSON; its secret is shown this once)")
    kc.add_argument("--tenant", required=True, type=_text, help="tenant id or name")
    kc.add_argument("--role", default="member", choices=["admin", "member", "approver", "viewer"])
    kc.add_argument("--user", type=_text, help="bind the key to this user id (it acts as that user)")
    kc.add_argument("--project", type=_text, help="bind the key to this project id")
    b = sub.add_parser("bundle", help="bundles").add_subparsers(dest="sub", required=True)
    bp = b.add_parser("push", help="register a new version of the bundle in a folder, for one tenant")
    bp.add_argument("dir", help="the bundle's folder (bundle.yaml, main.py, ...)")
    bp.add_argument("--tenant", required=True, type=_text, help="tenant id or name")
    bd = b.add_parser("delete", help="retire a bundle: new runs by its name no longer get it")
    bd.add_argument("name", type=_text)
    owner = bd.add_mutually_exclusive_group(required=True)
    owner.add_argument("--tenant", type=_text, help="tenant id or name (its own bundle)")
    owner.add_argument("--platform", action="store_true",
                       help="a platform bundle (remove its folder from STOCKADE_BUNDLES_DIR first)")
    pol = sub.add_parser("policy", help="policies").add_subparsers(dest="sub", required=True)
    pv = pol.add_parser("validate")
    pv.add_argument("file")
    a = sub.add_parser("audit", help="audit log").add_subparsers(dest="sub", required=True)
    av = a.add_parser("verify")
    av.add_argument("--tenant", type=_text, help="tenant id or name (default: every tenant)")
    av.add_argument("--anchor", action="append", default=[], metavar="FILE",
                    help="a chain head kept elsewhere (an earlier `audit verify` output, or a run receipt): "
                         "fails if the chain no longer holds it (its tail was cut off); repeatable")
    sec = sub.add_parser("secrets", help="secrets sealed at rest").add_subparsers(dest="sub", required=True)
    sr = sec.add_parser("reseal", help="seal every stored secret (MCP server URLs and headers) anew under the "
                                        "current STOCKADE_SECRETS_KEY, after a rotation: then the retired key can go")
    sr.add_argument("--tenant", type=_text, help="tenant id or name (default: every tenant)")
    r = sub.add_parser("receipt", help="run receipts").add_subparsers(dest="sub", required=True)
    rv = r.add_parser("verify")
    rv.add_argument("file", help="receipt JSON (- for stdin)")
    rv.add_argument("--public-key", required=True, action="append", metavar="PEM",
                    help="file of the published key(s): PEM (one or more), or the JSON of GET "
                         "/v1/receipts/public-keys (retired keys too; the receipt's key_id picks one); repeatable")
    r.add_parser("adopt-key", help="make this node's signing key (STOCKADE_SIGNING_KEY_FILE, or the one in the data "
                 "dir) the deployment's, whatever key was: for a key lost for good (`serve`/`api` refuse a key not "
                 "the deployment's)").add_argument("--data-dir", help=_DATA_DIR)
    return p


def _flag_named(message: str, flags: dict[str, str]) -> str:
    """``message`` naming ``--port`` where it named STOCKADE_PORT, when the value came from that flag."""
    for field, flag in flags.items():
        message = message.replace(f"setting STOCKADE_{field.upper()}", flag)
    return message


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already reported on one line (2)
        return exc.code if isinstance(exc.code, int) else 2
    overrides: dict[str, Any] = {}
    for attr in ("host", "port", "data_dir"):
        v = getattr(args, attr, None)
        if v is not None:
            overrides[attr] = v
    warnings = _WarningLines()
    if args.cmd not in ("serve", "api", "worker"):  # a server logs through its own handler (app/server.py)
        logging.getLogger().addHandler(warnings)
    try:
        if args.cmd == "policy":
            return _policy_validate(args.file)
        if args.cmd == "receipt" and args.sub == "verify":
            return _receipt_verify(args.file, args.public_key)
        # Path("") is ".": an empty argument (an unset shell variable) pushed the current folder
        if args.cmd == "bundle" and args.sub == "push" and not args.dir:
            raise StockadeError("bundle.invalid", "no bundle folder given (an empty path)")
        flags = {k: "--" + k.replace("_", "-") for k in overrides}
        settings = load_settings(flags=flags, **overrides)
        if args.cmd in ("serve", "api", "worker"):
            from app.server import run, run_server

            try:
                check_role(settings, args.cmd)
                run(run_server(settings, api=args.cmd != "worker", workers=args.cmd != "api"))
            except KeyboardInterrupt:
                pass
            except SettingsError as exc:  # e.g. a port in use: name the flag the value came from, as above
                raise SettingsError(_flag_named(str(exc), flags)) from None
            return 0
        return asyncio.run(_admin(_waiting_at_most(settings), args))
    except KeyboardInterrupt:  # Ctrl-C: what was committed stays, nothing half-done is published
        print("stockade: interrupted", file=sys.stderr)
        return 130
    except SettingsError as exc:
        return _fail(f"settings.invalid: {exc}")
    # a migration set that cannot be applied safely, e.g. an applied file edited since. (A database migrated by a
    # newer Stockade is no MigrationError: it is used, and the runner's warning is a `stockade: warning:` line.)
    except MigrationError as exc:
        return _fail(f"store.misconfigured: {exc}")
    except StockadeError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except (OSError, ValueError) as exc:
        return _fail(f"internal: {type(exc).__name__}: {exc}")
    except Exception as exc:  # the contract: one line, no traceback -- even for what we did not foresee
        return _fail(f"internal: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unexpected error'}")
    finally:
        logging.getLogger().removeHandler(warnings)


def _unseen_key(tenant_id: str, key_id: str) -> str:
    return (f"key {key_id} of tenant {tenant_id} was made but not shown: revoke it "
            f"(stockade key revoke {key_id} --tenant {tenant_id}) and make another (stockade key create)")


# How long a command waits for a row or table another session holds (an operator's open transaction, a long
# migration), as SQLite's busy_timeout bounds it there: then one line (store.unavailable), not a hang for ever.
_PG_LOCK_TIMEOUT = "10s"


def _waiting_at_most(settings: Settings) -> Settings:
    """The settings, with the CLI's PostgreSQL sessions given a lock timeout (asyncpg passes a URL's unknown query
    parameters as session settings); one the operator put in the URL is kept."""
    if not settings.uses_postgres or settings.database_url is None:
        return settings
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(settings.database_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "lock_timeout" for k, _ in query):
        return settings
    url = urlunsplit(parts._replace(query=urlencode([*query, ("lock_timeout", _PG_LOCK_TIMEOUT)])))
    return settings.model_copy(update={"database_url": url})


async def _admin(settings: Settings, args: argparse.Namespace) -> int:
    from supervisor.runtime import open_runtime
    from supervisor.tenancy import create_key, create_tenant, revoke_key

    anchors: list[Any] = []
    if args.cmd == "audit":  # bad anchor files are refused before anything is opened
        from supervisor.audit.anchors import anchors_in

        try:
            for path in args.anchor:
                anchors += anchors_in(_read_capped(path, _MAX_RECEIPT_BYTES, f"anchor file {path}"), path)
        except ValueError as exc:
            raise StockadeError("input.invalid", str(exc)) from None
    if args.cmd not in ("migrate", "demo") and (args.cmd, args.sub) != ("tenant", "create") and not settings.uses_postgres:
        # these read or change what exists: a mistyped STOCKADE_DATA_DIR must not get a fresh empty store (and an
        # audit "verified" over no records), nor leave a data dir behind
        if not settings.sqlite_path.exists():  # noqa: ASYNC240 - one stat in a CLI command
            where = "STOCKADE_DATABASE_URL" if settings.database_url is not None else "STOCKADE_DATA_DIR"
            raise StockadeError("store.misconfigured", f"no database at {settings.sqlite_path}: check {where} "
                                "(or run `stockade migrate` to create one)")
    elif args.cmd not in ("migrate", "demo") and (args.cmd, args.sub) != ("tenant", "create"):
        # the same on PostgreSQL: a mistyped database name must not get the whole schema (and the data dir fresh
        # keys) from a command that only reads, which then reported an empty deployment ("verified", no tenants)
        await _pg_deployed(settings)
    if args.cmd == "demo":  # the key it prints is for `stockade serve` (make run): none if serve cannot listen
        from app.server import check_listen

        check_listen(settings.host, settings.port)
    # a command signs no receipt, so it neither checks nor records the deployment's signing key (a `migrate` run
    # with a data dir of its own would have made its generated key the deployment's): `serve` and `api` do
    rt = await open_runtime(settings, check_audit_key=args.cmd != "audit", check_secrets_key=args.cmd != "secrets",
                            check_signing_key=False)
    s = rt.services
    try:
        if args.cmd == "migrate":
            _out(json.dumps({"migrated": True, "database": "postgresql" if settings.uses_postgres else str(settings.sqlite_path)}))
            return 0
        if args.cmd == "demo":
            return await _demo(rt, settings)
        if args.cmd == "tenant" and args.sub == "list":
            for t in await s.tenants.list_tenants():
                _out(json.dumps({"tenant_id": t.id, "name": t.name, "created_at": t.created_at}))
            return 0
        if args.cmd == "tenant":
            tenant, key = await create_tenant(s, args.name, budget_usd=args.budget_usd)
            await _key_created(rt, tenant.id, key)
            _out(json.dumps({"tenant_id": tenant.id, "name": tenant.name, "api_key": key.secret}),
                 unseen=_unseen_key(tenant.id, key.key.id))
            return 0
        if args.cmd == "key" and args.sub == "list":
            tid = await _tenant_id(s, args.tenant)
            for k in await s.tenants.list_keys(tid):
                _out(json.dumps({"key_id": k.id, "prefix": k.prefix, "role": k.role, "user_id": k.user_id,
                                  "project_id": k.project_id, "created_at": k.created_at, "revoked_at": k.revoked_at}))
            return 0
        if args.cmd == "key" and args.sub == "revoke":
            tid = await _tenant_id(s, args.tenant)
            revoked = await revoke_key(s, tid, args.key_id)  # False: revoked already, a retried command succeeds
            if revoked is None:
                raise StockadeError("not_found", f"no key {args.key_id!r} in tenant {tid}")
            if revoked:
                await rt.recorder.record(tid, "key.revoked", detail={"key_id": None, "id": args.key_id})
            _out(json.dumps({"tenant_id": tid, "key_id": args.key_id, "revoked": True}))
            return 0
        if args.cmd == "key":
            tid = await _tenant_id(s, args.tenant)
            nk = await create_key(s, tid, args.role, user_id=args.user, project_id=args.project)
            await _key_created(rt, tid, nk)
            _out(json.dumps({"tenant_id": tid, "key_id": nk.key.id, "role": nk.key.role, "api_key": nk.secret}),
                 unseen=_unseen_key(tid, nk.key.id))
            return 0
        if args.cmd == "bundle" and args.sub == "delete":
            return await _bundle_delete(rt, s, args)
        if args.cmd == "bundle":
            tid = await _tenant_id(s, args.tenant)
            src = Path(args.dir)
            if not src.is_dir():  # noqa: ASYNC240 - one stat in a CLI command
                raise StockadeError("bundle.invalid", f"{src} is not a directory")
            v = await rt.registry.register_dir(src, tid)
            await rt.recorder.record(tid, "bundle.registered", detail={
                "key_id": None, "by": "cli", "bundle": v.name, "version": v.version, "digest": v.digest})
            _out(json.dumps({"name": v.name, "version": v.version, "digest": v.digest, "tenant_id": tid}))
            return 0
        if args.cmd == "audit":
            return await _audit_verify(rt, args.tenant, anchors, anchored=bool(args.anchor))
        if args.cmd == "secrets":
            return await _secrets_reseal(rt, args.tenant)
        if args.cmd == "receipt":  # adopt-key
            from supervisor.audit.keys import key_id
            from supervisor.audit.signing_check import adopt_signing_key, shown_key_id

            kid = key_id(rt.signing_key)
            before = await adopt_signing_key(s.audit, kid)
            # "replaced": the key it replaced, none when none was recorded or it was this key already (a retried
            # command: "changed" false). A value a database writer put there is shown escaped and cut
            changed = before != kid
            _out(json.dumps({"key_id": kid, "replaced": shown_key_id(before) if changed else None, "changed": changed}))
            return 0
    finally:
        await rt.stop()
    return 2


async def _key_created(rt: Any, tenant_id: str, nk: Any) -> None:
    """The audit record of a key the operator made (``key create``, ``tenant create``, ``demo``), as the API
    records one: ``key_id`` None, made by the operator, not by a key."""
    await rt.recorder.record(tenant_id, "key.created", detail={
        "key_id": None, "id": nk.key.id, "role": nk.key.role, "user_id": nk.key.user_id,
        "project_id": nk.key.project_id})


async def _pg_deployed(settings: Settings) -> None:
    """store.misconfigured unless the PostgreSQL database holds Stockade's schema (the migrator's bookkeeping
    table): looked up on a connection of its own, before anything is migrated or generated."""
    from supervisor.stores.postgres.db import open_postgres

    db = await open_postgres(settings.database_url or "", min_size=1, max_size=1, migrate=False)
    try:
        async with db.acquire() as conn:
            row = await conn.fetchrow("SELECT to_regclass('schema_migrations') IS NOT NULL AS deployed, "
                                      "current_database() AS name")
    finally:
        await db.close()
    if not row["deployed"]:
        raise StockadeError("store.misconfigured", f"no Stockade schema in PostgreSQL database {row['name']!r} (no "
                            "schema_migrations table): check STOCKADE_DATABASE_URL (or run `stockade migrate` to "
                            "create one)")


async def _bundle_delete(rt: Any, s: Any, args: argparse.Namespace) -> int:
    tid = None if args.platform else await _tenant_id(s, args.tenant)
    try:
        out = await rt.registry.delete(tid, args.name)
    except StockadeError as exc:
        if tid is None or exc.code != "auth.forbidden":
            raise
        # the registry's answer is a tenant's (an API key's): the operator can, with --platform
        raise StockadeError("input.invalid", f"{args.name!r} is a platform bundle, not one of tenant {tid}'s: to "
                            f"retire it, remove its folder from STOCKADE_BUNDLES_DIR, then run `stockade bundle "
                            f"delete {args.name} --platform`") from None
    if tid is not None:
        await rt.recorder.record(tid, "bundle.deleted", detail={"key_id": None, "bundle": args.name,
                                                                "versions": out["versions"], "by": "cli"})
    _out(json.dumps({**out, "tenant_id": tid}))
    return 0


async def _secrets_reseal(rt: Any, tenant_ref: str | None) -> int:
    """One JSON line per tenant: its MCP servers, how many were sealed anew under the current key, and how many
    changed or went away meanwhile (left as they are: run the command again)."""
    s = rt.services
    mcp = s.extras.get("mcp")
    if mcp is None:
        raise StockadeError("store.misconfigured", "no MCP store in this deployment: nothing is sealed")
    tids = [await _tenant_id(s, tenant_ref)] if tenant_ref else [t.id for t in await s.tenants.list_tenants()]
    for tid in tids:
        servers, done = await mcp.store.reseal(tid)
        _out(json.dumps({"tenant_id": tid, "servers": servers, "resealed": done}))
    return 0


async def _demo(rt: Any, settings: Settings) -> int:
    from supervisor.tenancy import create_key, create_tenant

    s = rt.services
    tenant = await s.tenants.get_tenant_by_name("demo")
    if tenant is None:
        tenant, nk = await create_tenant(s, "demo", budget_usd=10.0)
    else:
        nk = await create_key(s, tenant.id, "admin")
    await _key_created(rt, tenant.id, nk)
    url = f"http://{settings.host}:{settings.port}"
    _out(f"\nStockade is starting on {url}  (web UI: {url}/ui/)\n"
         f"demo tenant {tenant.id}; API key (shown once): {nk.secret}\n\n"
         f"  curl -s -X POST {url}/v1/runs -H 'Authorization: Bearer {nk.secret}' "
         f"-H 'Content-Type: application/json' -d '{{\"bundle\":\"echo\",\"input\":\"hello stockade\"}}'\n"
         f"  curl -N {url}/v1/runs/<run id>/events -H 'Authorization: Bearer {nk.secret}'\n",
         unseen=_unseen_key(tenant.id, nk.key.id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
