"""``stockade``: one CLI for servers and operators. Errors: one line on stderr, non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any, NoReturn

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


class _WarningLines(logging.Handler):
    """What an operator command logs at WARNING or above (a database migrated by a newer Stockade, a misspelt
    setting): one line each on stderr, ``stockade: warning: ...`` like the command's own lines (without a
    handler, Python printed the bare message)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"stockade: {record.levelname.lower()}: {_printable(record.getMessage())}", file=sys.stderr)
        except Exception:
            self.handleError(record)


def _printable(text: str) -> str:
    """``text`` with every control or format character escaped (``\\x1b``, ``\\n``, ``\\u202e``): a name taken
    from a bundle folder, an anchor file or the command line cannot drive the terminal or start a second line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _fail(msg: str) -> int:
    print(f"stockade: {_printable(msg)}", file=sys.stderr)
    return 1


def _out(text: str, *, unseen: str = "") -> None:
    """``text`` on stdout, written now: a full disk or a closed pipe is one line naming what was done but not
    shown (``unseen``: a key made and never printed), not a lost secret or a traceback at exit. A reader that
    stopped reading a listing (``| head``) is no error."""
    try:
        if sys.stdout is None:  # started with stdout closed (>&-): print() would drop the text without a word
            raise OSError(errno.EBADF, "standard output is closed")
        print(text, flush=True)
    except OSError as exc:
        try:  # the unwritten rest: dropped, not retried (and reported again, as a traceback) at exit
            if sys.stdout is not None:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass  # stdout is no file (embedded, captured): nothing is flushed at exit either
        if isinstance(exc, BrokenPipeError) and not unseen:
            return
        raise StockadeError("internal", f"cannot write the output: {exc.strerror or exc}" + (f"; {unseen}" if unseen else "")) from None


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


async def _tenant_id(services: Any, ref: str) -> str:
    t = await services.tenants.get_tenant(ref) or await services.tenants.get_tenant_by_name(ref)
    if t is None:
        shown = ref if len(ref) <= 200 else ref[:200] + "…"  # a pasted blob is not echoed whole
        raise StockadeError("not_found", f"no tenant {shown!r}" + (f" ({len(ref)} characters)" if len(ref) > 200 else ""))
    return t.id


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
            from supervisor.audit.signing_check import adopt_signing_key

            kid = key_id(rt.signing_key)
            _out(json.dumps({"key_id": kid, "replaced": await adopt_signing_key(s.audit, kid)}))
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


async def _audit_verify(rt: Any, tenant_ref: str | None, anchors: list[Any], *, anchored: bool = False) -> int:
    """``anchored``: --anchor was given (its files may still name no head)."""
    from supervisor.audit.chain import ChainVerifier
    from supervisor.audit.keys import public_key_pem
    from supervisor.audit.receipts import verify_receipt

    s = rt.services
    if anchored and not anchors:
        return _fail("input.invalid: the anchor files name no chain head (an empty \"heads\", a receipt from before "
                     "its tenant's first record): there is nothing to check the chains against")
    receipts = [a for a in anchors if a.receipt is not None]
    signers = [public_key_pem(k) for k in (rt.signing_key, *rt.retired_signing_keys, rt.next_signing_key)
               if k is not None] if receipts else []
    for a in receipts:  # a receipt is trusted as an anchor only as signed: an edited one is no evidence against the log
        if not verify_receipt(a.receipt, signers):
            return _fail(f"input.invalid: {a.source}: a receipt whose signature this deployment's signing keys do not "
                         "verify (changed after it was signed?): not an anchor to check the log against")
    tenants = [await _tenant_id(s, tenant_ref)] if tenant_ref is not None else await s.audit.tenants()
    if tenant_ref is None:  # an anchored tenant whose records are all gone is not among those with records
        tenants += sorted({a.tenant_id for a in anchors} - set(tenants))
    elif anchors and not any(a.tenant_id == tenants[0] for a in anchors):
        # asked to check one tenant against anchors of others only: it checked nothing, and said "verified"
        files = ", ".join(sorted({str(a.source) for a in anchors}))
        return _fail(f"input.invalid: no anchor in {files} is of tenant {tenants[0]}: its chain has nothing to be "
                     "checked against (drop --tenant to check every anchored tenant)")
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
            return _fail(f"audit.corrupt: audit chain broken: {brk}")
        if head_problem is not None:
            return _fail(f"audit.corrupt: audit chain broken: tenant {tid}: records end at {verifier.last_seq} but {head_problem}")
        if head is not None and verifier.last_seq < head.seq:
            return _fail(f"audit.corrupt: audit chain broken: tenant {tid}: records end at {verifier.last_seq} but the head is {head.seq} (records deleted)")
        cut = [a for seq, pins in pinned.items() if seq > verifier.last_seq for a in pins]
        if cut:
            a = max(cut, key=lambda x: x.seq)
            return _fail(f"audit.corrupt: audit chain broken: tenant {tid}: records end at {verifier.last_seq} but {a.source} "
                         f"anchors record {a.seq} (records deleted from the end)")
        if verifier.last_seq:  # the last record verified (not the head read before: records came since)
            heads[tid] = {"seq": verifier.last_seq, "hash": verifier.prev_hash}
    # "heads" is an anchor file for a later run (--anchor): keep it where the database's writers cannot reach
    _out(json.dumps({"verified": True, "tenants": len(tenants), "records": total, "anchors": checked,
                      "heads": heads}))
    return 0


def _policy_validate(path: str) -> int:
    from supervisor.policy.cli import validate_file

    try:
        errors = validate_file(path)
    except OSError as exc:  # missing, a folder, a FIFO or a device (refused, not waited on)
        raise StockadeError("input.invalid", f"cannot read {path}: {exc.strerror or exc}") from None
    for e in errors:  # the errors quote the file's own text: escaped like every other line
        print(_printable(f"{path}: {e}"), file=sys.stderr)
    if errors:
        return 1
    _out(_printable(f"{path}: valid policy"))
    return 0


_MAX_RECEIPT_BYTES = 256 * 1024 * 1024  # also anchor files: receipts are anchors too
_MAX_KEY_BYTES = 64 * 1024


def _read_capped(path: str, cap: int, what: str) -> bytes:
    """At most ``cap`` bytes of ``path`` (``-``: stdin), a regular file: never wait on a FIFO without a writer
    (or a terminal device), never read /dev/zero or a stray huge file whole."""
    try:
        if path == "-":
            if sys.stdin is None:  # started with stdin closed (<&-)
                raise OSError(errno.EBADF, "standard input is closed")
            data = sys.stdin.buffer.read(cap + 1)
        else:
            # O_NONBLOCK: opening a FIFO without a writer returns at once (then it is refused) instead of blocking
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise StockadeError("input.invalid", f"cannot read {path}: not a regular file")
                data = fh.read(cap + 1)
    except OSError as exc:
        raise StockadeError("input.invalid", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > cap:
        raise StockadeError("input.too_large", f"the {what} is larger than {cap} bytes")
    return data


def _public_keys(data: bytes, key_path: str) -> list[bytes]:
    """The PEM public keys in one ``--public-key`` file: one or more PEM blocks, or the JSON document of
    ``GET /v1/receipts/public-keys`` (the current key and the retired ones, after a rotation)."""
    import re

    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    bad = StockadeError("input.invalid", f"public key {key_path} is not a PEM public key")
    if data.lstrip()[:1] == b"{":
        try:
            pems = [k["pem"].encode() for k in json.loads(data)["data"]]
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
            raise bad from None
    else:
        pems = re.findall(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", data, re.S) or [data]
    for pem in pems or [b""]:
        try:
            serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm):
            raise bad from None
    return pems


def _receipt_verify(path: str, key_paths: list[str]) -> int:
    from supervisor.audit.receipts import key_ids, load_receipt, verify_receipt

    data = _read_capped(path, _MAX_RECEIPT_BYTES, "receipt")
    pems = [p for kp in key_paths for p in _public_keys(_read_capped(kp, _MAX_KEY_BYTES, "public key"), kp)]
    try:
        receipt = load_receipt(data)  # a member written twice: refused (other readers keep the other one)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        return _fail(f"input.invalid: the receipt is not JSON: {str(exc).splitlines()[0] if str(exc) else 'nested too deeply'}")
    kid = receipt.get("key_id") if isinstance(receipt, dict) else None
    given = key_ids(pems)
    if isinstance(kid, str) and kid not in given:  # nothing to check it with: not the same as a forged signature
        return _fail(f"receipt.invalid: the receipt names signing key {kid[:64]!r}, which is none of the keys given "
                     f"({', '.join(sorted(given)) or 'none'}): verify it with the deployment's current key list "
                     "(GET /v1/receipts/public-keys); an edited key_id also ends here")
    if not verify_receipt(receipt, pems):  # several keys: the one the receipt's key_id names
        return _fail("receipt.invalid: receipt signature is INVALID")
    _out(json.dumps({"valid": True, "run_id": receipt.get("run_id"), "spans": len(receipt.get("spans", [])),
                     "key_id": receipt.get("key_id")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
