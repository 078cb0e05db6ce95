"""The one settings class (prefix ``STOCKADE_``), parsed once in ``main()``.

Nothing below the entry points reads ``os.environ``; the parsed ``Settings``
object is passed down.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _EnvDecodeError

from supervisor.fspath import resolve

__all__ = ["Settings", "SettingsError", "check_role", "load_settings"]

log = logging.getLogger("stockade.settings")


class SettingsError(Exception):
    """Invalid settings; the message is one line naming the setting and the problem."""


# Ceilings for values that become kernel limits, Redis milliseconds or timer deadlines: past them a setting
# was accepted at start-up and then failed every run or call (STOCKADE_QUEUE_VISIBILITY_S=1e26: the Redis
# queue answered every claim with an error, so no run ever started). The same bound as a bundle's limits.
_MAX_S = 1e9  # about 31 years
_MAX_MB = 2**24  # 16 TiB; times 2**20 it stays far inside a C long
_MAX_UID = 2**32 - 2  # (uid_t)-1 is "no uid"
_OVERFLOW_UID = 65534  # the kernel's overflowuid (sandbox/identity.py never hands it out)
_MAX_WORKER_ID = 253  # a DNS name's (a Kubernetes pod name's) length


class Settings(BaseSettings):
    # env_ignore_empty: ``STOCKADE_X=`` (compose's ``${X:-}``) means "unset", never "" -- an empty HOST would
    # bind every interface, an empty DATA_DIR would put the database in the working directory.
    # allow_inf_nan=False: an ``inf`` timeout or interval is a typo, not a setting.
    model_config = SettingsConfigDict(env_prefix="STOCKADE_", extra="ignore", frozen=True, env_ignore_empty=True,
                                      allow_inf_nan=False)

    # --- where state lives
    data_dir: Path = Path("./.stockade")
    # None -> SQLite in data_dir; postgresql://... -> PostgreSQL. Both URLs may hold a password: out of repr()
    database_url: str | None = Field(None, repr=False)
    redis_url: str | None = Field(None, repr=False)  # None -> in-memory limits/queues/event tail
    redis_prefix: str = "stockade:"
    db_pool_min: int = Field(2, ge=1, le=200)
    db_pool_max: int = Field(10, ge=1, le=500)
    bundles_dir: Path = Path("./bundles")
    watch_bundles: bool = True

    # --- HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    cors_origins: list[str] = []
    # SSE streams + Socket.IO subscriptions one tenant may hold open on one API process (app/stream_slots.py)
    max_streams_per_tenant: int = Field(1000, ge=1)
    # Socket.IO connections one tenant may hold open on one API process (each holds a session and a task
    # re-checking its key, subscribed or not)
    max_socketio_connections_per_tenant: int = Field(1000, ge=1)

    # --- workers
    worker_id: str | None = None  # default: hostname:pid
    worker_concurrency: int = Field(16, ge=1, le=4096)
    # a worker extends its job every visibility/3 s; below ~1 s a GC pause or a slow store write lets the
    # job be redelivered while its run is still alive (seen below ~0.15 s); hence the floor
    queue_visibility_s: float = Field(30.0, ge=1.0, le=_MAX_S)
    run_timeout_max_s: float = Field(3600.0, gt=0, le=_MAX_S)
    run_timeout_default_s: float = Field(300.0, gt=0, le=_MAX_S)
    reservation_ttl_s: float = Field(120.0, gt=0, le=_MAX_S)
    approval_ttl_s: float = Field(3600.0, gt=0, le=_MAX_S)
    sweep_interval_s: float = Field(5.0, gt=0, le=_MAX_S)
    # how long a tool call's idempotency key (and the result replayed to its repeats) is kept; older ones
    # are pruned by the sweeper, so a repeat after that runs again (as Stripe's keys expire after 24 h)
    idempotency_ttl_s: float = Field(86_400.0, ge=3600, le=_MAX_S)
    # host:port a `stockade worker` serves GET /metrics on (supervisor/metrics.py); unset: no listener
    worker_metrics_addr: str | None = None

    # --- secrets (never enter a sandbox)
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    audit_key: SecretStr | None = None  # HMAC key for the audit chain; default: generated into data_dir
    secrets_key: SecretStr | None = None  # seals secrets at rest (MCP headers); default: generated into data_dir
    signing_key_file: Path | None = None  # Ed25519 private key (PEM) for receipts; default: data_dir
    # key rotation: the keys used before the current one, oldest first, comma-separated (or a JSON list, for
    # a key holding a comma). Audit: records MAC'd under them still verify, never after a newer key's record
    # (supervisor/audit/chain.py). Signing: PEM files (private or public) whose receipts still verify.
    audit_keys_retired: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    signing_key_files_retired: Annotated[tuple[Path, ...], NoDecode] = ()
    secrets_keys_retired: Annotated[tuple[SecretStr, ...], NoDecode] = ()  # sealed values still open
    # rolling rotation (README): the key every node will use next, set on all nodes before any makes it current.
    # Audit: records MAC'd under it verify (a node seals with it once it finds another node did). Signing:
    # published by /v1/receipts/public-keys, signs nothing. Secrets: values sealed under it open.
    audit_key_next: SecretStr | None = None
    signing_key_file_next: Path | None = None
    secrets_key_next: SecretStr | None = None

    # --- LLM
    llm_pricing_file: Path | None = None  # JSON/YAML table overriding the shipped per-token prices
    llm_timeout_s: float = Field(120.0, gt=0, le=_MAX_S)
    llm_max_retries: int = Field(2, ge=0, le=10)

    # --- HTTP egress
    egress_allow_private: list[str] = []  # CIDRs an operator opens, e.g. ["10.1.0.0/16"]
    egress_max_bytes: int = Field(5 * 1024 * 1024, ge=1)
    egress_timeout_s: float = Field(20.0, gt=0, le=_MAX_S)
    egress_max_redirects: int = Field(5, ge=0, le=20)

    # --- rate limits (the ceiling: a policy's `limits:` may only tighten them, supervisor/limits/rules.py)
    rate_tenant_per_s: float = Field(200.0, gt=0)
    rate_tenant_burst: int = Field(400, ge=1)
    rate_user_per_s: float = Field(50.0, gt=0)
    rate_user_burst: int = Field(100, ge=1)
    rate_tool_per_s: float = Field(100.0, gt=0)
    rate_tool_burst: int = Field(200, ge=1)
    rate_tenant_per_hour: int = Field(200_000, ge=1)
    rate_llm_tokens_per_min: int = Field(200_000, ge=1)

    # --- sandbox
    sandbox_backend: Literal["bwrap"] = "bwrap"
    sandbox_bwrap: str = "bwrap"
    sandbox_python: str | None = None  # interpreter inside the jail; default: the running one
    # uids the run sandboxes get (sandbox/identity.py): unprivileged, below the kernel's (uid_t)-1, never
    # its overflow uid; the pool is a list built at start-up, hence a count bound. The count comes first: the
    # range check is the base's (_uid_range), which is what places the range, and so what a refusal names
    sandbox_uid_count: int = Field(1024, ge=1, le=1_000_000)
    sandbox_uid_base: int = Field(200_000, ge=1000)
    # rlimits set in the forked child (sandbox/_limits.py): a value the kernel cannot take (past a C long,
    # RLIMIT_NOFILE past fs.nr_open) started fine and then failed every run; hence the ceilings
    sandbox_memory_mb: int = Field(512, ge=16, le=_MAX_MB)
    sandbox_max_procs: int = Field(64, ge=1, le=4_194_304)  # the kernel's PID_MAX_LIMIT
    sandbox_max_open_files: int = Field(256, ge=16, le=1_048_576)  # the kernel's default fs.nr_open
    sandbox_max_file_mb: int = Field(64, ge=1, le=_MAX_MB)
    sandbox_cpu_s: int = Field(300, ge=1, le=int(_MAX_S))
    sandbox_workdir_mb: int = Field(256, ge=1, le=_MAX_MB)
    sandbox_tmpfs_mb: int = Field(64, ge=1, le=_MAX_MB)
    sandbox_max_output_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    sandbox_max_events_per_s: int = Field(500, ge=1)
    sandbox_max_frame_bytes: int = Field(1024 * 1024, ge=1024)
    sandbox_warm_pool: int = Field(2, ge=0, le=64)  # sandboxes launched ahead (Python + SDK imported), used once
    # code.run sandboxes one tenant may have running at once on one worker process (the uid pool is one per
    # process; supervisor/README.md, "Tenant quotas"): past it a call is rate.limited
    code_run_max_per_tenant: int = Field(8, ge=1, le=1_000_000)

    # --- bundles
    bundle_max_files: int = Field(1000, ge=1)
    bundle_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)

    # --- storage tool
    storage_quota_mb: int = Field(100, ge=1)

    # --- knowledge base (kb.*): per tenant, enforced by the KB store (supervisor/stores/kb_port.py)
    kb_quota_mb: int = Field(100, ge=1)  # UTF-8 bytes of document text (body + title + source)
    kb_quota_docs: int = Field(100_000, ge=1)

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("data_dir", "bundles_dir", "llm_pricing_file", "signing_key_file", "signing_key_file_next")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        # resolved once, here: sandboxes bind these paths, and bwrap needs them absolute
        try:
            return None if v is None else resolve(v.expanduser())
        except (RuntimeError, OSError) as exc:  # a symlink loop (supervisor.fspath), "~nobody"
            raise ValueError(f"cannot resolve {v}: {exc}") from None

    @field_validator("data_dir")
    @classmethod
    def _utf8_path(cls, v: Path) -> Path:
        # run folders under it are handed to bwrap as UTF-8 text: a server on a non-UTF-8 path started, and then
        # no sandbox could be launched
        try:
            str(v).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{ascii(str(v))} is not a UTF-8 path") from None
        return v

    @field_validator("llm_pricing_file", "signing_key_file", "signing_key_file_next")
    @classmethod
    def _regular_file(cls, v: Path | None) -> Path | None:
        # read whole at start-up: a FIFO would block it for ever, /dev/zero would fill the memory
        if v is not None and v.exists() and not v.is_file():
            raise ValueError(f"{v} is not a regular file")
        return v

    @field_validator("audit_key", "secrets_key", "audit_key_next", "secrets_key_next", mode="before")
    @classmethod
    def _key(cls, v: object) -> object:
        if v in (None, ""):
            return None  # unset: generated once into the data dir
        if isinstance(v, str) and len(v) < 16:
            raise ValueError("must be at least 16 characters (it is a key)")
        return v

    @field_validator("audit_keys_retired", "secrets_keys_retired", mode="before")
    @classmethod
    def _retired_keys(cls, v: object) -> object:
        # never echoed: the message names the position of a bad key, not its value
        keys = _retired_list(v)
        for i, k in enumerate(keys, start=1):
            if not isinstance(k, str) or len(k) < 16:
                raise ValueError(f"key {i} of {len(keys)} must be at least 16 characters (it is a key)")
        if len(set(keys)) != len(keys):
            raise ValueError("lists one key twice")
        return tuple(keys)

    @field_validator("signing_key_files_retired", mode="before")
    @classmethod
    def _retired_files(cls, v: object) -> object:
        out = []
        for f in _retired_list(v):
            if not isinstance(f, (str, Path)):
                raise ValueError("must be PEM file paths")
            try:  # resolved once, as signing_key_file; read (and refused if no key) where the keys are loaded
                path = resolve(Path(f).expanduser())
            except (RuntimeError, OSError) as exc:
                raise ValueError(f"cannot resolve {f}: {exc}") from None
            if path.exists() and not path.is_file():
                raise ValueError(f"{path} is not a regular file")
            out.append(path)
        return tuple(out)

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not (v.startswith("postgresql://") or v.startswith("postgres://") or v.startswith("sqlite:///")):
            raise ValueError("must start with postgresql:// or sqlite:///")
        _check_port(v)
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not (v.startswith("redis://") or v.startswith("rediss://") or v.startswith("unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        _check_port(v)
        _check_redis_db(v)
        return v

    @field_validator("redis_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        # every key of the deployment starts with it: a blank one shares the keyspace with whatever else uses
        # the Redis database (another deployment's "" and "stockade:" keys among them)
        if not v.strip():
            raise ValueError("must not be empty or blank (it starts every Redis key of this deployment)")
        return v

    @field_validator("worker_id")
    @classmethod
    def _worker_id(cls, v: str | None) -> str | None:
        # it names the worker in the queue, the runs, its Redis claim and log lines: one not UTF-8 (lone
        # surrogates from a mis-encoded env file) failed the start with a UnicodeEncodeError traceback
        if v is None:
            return None
        if not v.strip():
            raise ValueError("must not be blank (unset it for the default, hostname:pid)")
        if len(v) > _MAX_WORKER_ID:
            raise ValueError(f"must be at most {_MAX_WORKER_ID} characters, not {len(v)}")
        if not v.isprintable():  # also C1 controls, line separators, bidi overrides, lone surrogates
            raise ValueError("must be valid UTF-8 without control or format characters")
        return v

    @field_validator("openai_base_url", "anthropic_base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        # checked here: the SDKs only fail at the first call, as "Connection error" ("localhost:8000/v1")
        if v in (None, ""):
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000/v1")
        _check_port(v)
        return v

    @field_validator("sandbox_uid_base")
    @classmethod
    def _uid_range(cls, v: int, info: ValidationInfo) -> int:
        # reported as STOCKADE_SANDBOX_UID_BASE (a base of 65000 was reported as a STOCKADE_SANDBOX_UID_COUNT
        # problem, a setting left at its default), the count named too: either may be the one to change
        count = info.data.get("sandbox_uid_count")
        if count is None:  # already refused
            return v
        if v + count > _MAX_UID:
            raise ValueError(f"{v} + STOCKADE_SANDBOX_UID_COUNT ({count}) must stay at most {_MAX_UID}")
        if v <= _OVERFLOW_UID < v + count:
            raise ValueError(f"with STOCKADE_SANDBOX_UID_COUNT={count}, the uids {v}..{v + count - 1} contain the "
                             f"kernel's overflow uid {_OVERFLOW_UID}")
        return v

    @field_validator("worker_metrics_addr")
    @classmethod
    def _listen_addr(cls, v: str | None) -> str | None:
        if v is None:
            return None
        _split_addr(v)
        return v

    @field_validator("egress_allow_private")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for c in v:
            try:
                ipaddress.ip_network(c.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{c!r} is not a CIDR network (e.g. [\"10.1.0.0/16\"])") from None
        return v

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        # each value fine alone, the two together not: these started and then gave wrong results
        for low, high in (("db_pool_min", "db_pool_max"), ("run_timeout_default_s", "run_timeout_max_s")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{_env(low)} ({getattr(self, low)}) is above {_env(high)} ({getattr(self, high)})")
        # a worker's runs and warm slots each hold a uid of the pool (supervisor/tools/code/_admission.py):
        # past it, runs the worker claimed failed with "all N sandbox uids are in use"
        if self.worker_concurrency + self.sandbox_warm_pool > self.sandbox_uid_count:
            raise ValueError(f"{_env('worker_concurrency')} ({self.worker_concurrency}) + {_env('sandbox_warm_pool')} "
                             f"({self.sandbox_warm_pool}) is above {_env('sandbox_uid_count')} "
                             f"({self.sandbox_uid_count}): a run the worker claims would find no sandbox uid")
        return self

    @property
    def uses_postgres(self) -> bool:
        return self.database_url is not None and not self.database_url.startswith("sqlite:///")

    @property
    def worker_metrics_listen(self) -> tuple[str, int] | None:
        """``worker_metrics_addr`` as (host, port), or None."""
        return None if self.worker_metrics_addr is None else _split_addr(self.worker_metrics_addr)

    @property
    def sqlite_path(self) -> Path:
        if self.database_url and self.database_url.startswith("sqlite:///"):
            return Path(self.database_url[len("sqlite:///") :])
        return self.data_dir / "stockade.db"


def check_role(settings: Settings, role: str) -> None:
    """``stockade api`` and ``stockade worker`` are halves of one deployment and meet only in PostgreSQL and
    Redis: without them each half ran on its own SQLite file and in-memory queue (an API whose runs stayed
    queued for ever while /readyz said ready; a worker no API reached). Raises SettingsError naming what is
    missing."""
    if role not in ("api", "worker"):
        return
    missing = []
    if not settings.uses_postgres:
        missing.append("STOCKADE_DATABASE_URL (postgresql://...)")
    if settings.redis_url is None:
        missing.append("STOCKADE_REDIS_URL (redis://...)")
    if missing:
        raise SettingsError(f"invalid settings: `stockade {role}` needs {' and '.join(missing)}, shared with the "
                            "other api and worker processes; for a single process use `stockade serve`")


def _env(field: str) -> str:
    return "STOCKADE_" + field.upper()


def _retired_list(v: object) -> list[object]:
    """A retired-keys setting: comma-separated (spaces around each item dropped), or a JSON list when it
    starts with ``[``; unset or empty: none. An empty item (``a,,b``) is refused, not skipped: a key lost to
    a stray comma would surface only as records that no longer verify."""
    if v is None or v == "":
        return []
    if isinstance(v, (list, tuple)):
        return [x.get_secret_value() if isinstance(x, SecretStr) else x for x in v]
    if not isinstance(v, str):
        raise ValueError("must be a comma-separated list")
    text = v.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except (ValueError, RecursionError):
            raise ValueError('starts with "[" but is not a JSON list of strings') from None
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError('starts with "[" but is not a JSON list of strings')
        items = [x.strip() for x in items]
    else:
        items = [x.strip() for x in text.split(",")]
    if any(x == "" for x in items):
        raise ValueError("holds an empty item (two commas in a row, or one at an end)")
    return items


def _check_port(url: str) -> None:
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    for host in hosts.split(","):  # libpq/asyncpg take several: postgresql://h1:5432,h2:5432/db
        try:
            urlsplit(f"//{host}").port  # noqa: B018 - parsing it is the check
        except ValueError:
            raise ValueError("the port is not a number from 0 to 65535") from None


def _split_addr(v: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9100`` for an IPv6 address) as (host, port), or ValueError saying what is wrong."""
    example = "must be host:port, e.g. 127.0.0.1:9100 (or [::1]:9100)"
    host, sep, port = v.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{v!r} {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # an IPv6 address without brackets: its last group read as the port
        raise ValueError(f"{v!r} {example}: put an IPv6 address in brackets")
    if not host or any(c.isspace() or c in "[]/@" for c in host):
        raise ValueError(f"{v!r} {example}")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{v!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def _check_redis_db(url: str) -> None:
    """redis-py reads the database from the path (``/7``) unless the query names one (``?db=3``), and uses 0 when
    the path is no number (``/abc``): each of those started on a database the operator did not name."""
    parts = urlsplit(url)
    dbs = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "db"]
    for d in dbs:
        if not (d.isascii() and d.isdigit()):
            raise ValueError(f"db={d!r} is not a database number")
    if len(set(map(int, dbs))) > 1:
        raise ValueError("names the database twice (db=...&db=...), differently")
    if parts.scheme == "unix":
        return  # the path is the socket's
    path = unquote(parts.path)
    if path in ("", "/"):
        return
    if not re.fullmatch(r"/[0-9]+", path):
        raise ValueError(f"the path {path!r} is not a database number (e.g. redis://host:6379/0)")
    if dbs and int(dbs[0]) != int(path[1:]):
        raise ValueError(f"the path names database {int(path[1:])} and db= names {int(dbs[0])}: name it once")


_FIELD = re.compile(r'field "([a-z0-9_]+)"')


def _nested_too_deep() -> str:
    """The list setting whose value is too deeply nested to parse (the parser names none)."""
    lists = {f"STOCKADE_{n.upper()}" for n, f in Settings.model_fields.items() if "list" in str(f.annotation)}
    for name, value in os.environ.items():  # read here, at the one parse of the environment
        if name.upper() in lists:
            try:
                json.loads(value)
            except RecursionError:
                return name.upper()
            except ValueError:
                continue
    return "STOCKADE_SETTINGS"


# Set explicitly empty, these are refused, not taken as unset (env_ignore_empty drops "" before any validator sees it)
_NEVER_EMPTY = ("redis_prefix",)
# STOCKADE_ variables that are no setting but are read by the deployment scripts and the test suite: no warning
_NOT_SETTINGS = frozenset({"STOCKADE_STACK", "STOCKADE_WORKERS", "STOCKADE_UP_TIMEOUT"})


def _environment_checks(overrides: dict[str, object]) -> None:
    """What pydantic-settings cannot tell (it reads the environment here too, at the one parse): a setting set
    to "" on purpose, and a misspelt name, which it ignores (STOCKADE_DATABASE_URI: the server started on a
    private SQLite file)."""
    known = {_env(n): n for n in Settings.model_fields}
    for name, value in os.environ.items():
        upper = name.upper()
        field = known.get(upper)
        if field in _NEVER_EMPTY and field not in overrides and not value.strip():
            raise SettingsError(f"invalid setting {upper}: is set but empty (unset it for the default)")
        if field is None and upper.startswith("STOCKADE_") and upper not in _NOT_SETTINGS \
                and not upper.startswith("STOCKADE_TEST_"):
            # only a near miss: the scripts' and tests' own STOCKADE_ variables are no typo
            close = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
            if close:
                log.warning("%s is not a setting and is ignored: did you mean %s?", name, close[0])


def load_settings(*, flags: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Parse the environment once. Raises SettingsError with one line.

    ``flags``: the command-line flag each override came from (``{"port": "--port"}``), named in the error
    instead of its variable: ``--port 99999`` was reported as STOCKADE_PORT, which the user had not set."""
    _environment_checks(overrides)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except _EnvDecodeError as exc:  # a list/dict setting whose value is not JSON: pydantic-settings names the field
        m = _FIELD.search(str(exc))
        name = "STOCKADE_" + (m.group(1).upper() if m else "SETTINGS")
        raise SettingsError(f'invalid setting {name}: must be a JSON list, e.g. ["a", "b"]') from None
    except RecursionError:  # a list setting nested deeper than the JSON parser goes: ``[[[[...]]]]``
        raise SettingsError(f'invalid setting {_nested_too_deep()}: must be a JSON list, e.g. ["a", "b"]') from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        # pydantic's "Value error, " before the message of a check of ours: not for the operator's eyes
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if not loc:  # a check of several settings together (_pairs): its message names them
            raise SettingsError(f"invalid settings: {msg}") from None
        name = (flags or {}).get(loc) or "setting STOCKADE_" + loc.upper()
        raise SettingsError(f"invalid {name}: {msg}") from None
