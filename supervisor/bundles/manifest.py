"""``bundle.yaml``: the manifest of a bundle. A trust boundary (tenants upload it).

Decisions:
- ``tools`` lists the tool names or globs (``kb.*``) the bundle may call. It only
  narrows: a call to a tool not listed is denied even if the tenant's policy
  allows it. Missing or empty means the bundle declares no tools, so every tool
  call is denied (``BundleManifest.allows_tool``).
- ``policy`` is kept as a raw mapping here; when ``supervisor.policy`` offers
  ``load_bundle_policy`` it validates it and its errors become ``bundle.invalid``.
- ``limits`` are requests; the caller caps them with the operator's settings.
- The entrypoint is checked with ``ast`` only: bundle code is never imported or
  executed in the supervisor.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from supervisor.bundles._yaml import YamlProblem, line_of, load_document
from supervisor.errors import StockadeError
from supervisor.hidden_chars import hidden_char
from supervisor.storable import has_nul

__all__ = [
    "MANIFEST_FILE", "NAME_PATTERN", "BundleLimits", "BundleManifest", "check_entrypoint",
    "parse_manifest", "validate_bundle_files",
]

MANIFEST_FILE = "bundle.yaml"
# \Z, not $: with .match, "$" also takes a final newline ("echo\n" was a bundle no API route could name)
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
_TOOL_PATTERN = re.compile(r"^[A-Za-z0-9_.*?-]{1,128}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_MANIFEST_BYTES = 64 * 1024
_MAX_ERRORS = 10
_JSON_INT = 2**53  # limits travel as JSON; keep them exact there


def _limit_int() -> Any:
    return Field(None, gt=0, le=_JSON_INT, strict=True)


def _limit_float() -> Any:
    return Field(None, gt=0, le=10**9, strict=True, allow_inf_nan=False)


class BundleLimits(BaseModel):
    """Resource requests of a bundle; ``None`` means the operator's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float | None = _limit_float()
    cpu_s: float | None = _limit_float()
    memory_mb: int | None = _limit_int()
    max_procs: int | None = _limit_int()
    max_open_files: int | None = _limit_int()
    max_file_mb: int | None = _limit_int()
    workdir_mb: int | None = _limit_int()
    tmpfs_mb: int | None = _limit_int()
    max_output_bytes: int | None = _limit_int()
    max_events_per_s: int | None = _limit_int()

    def requested(self) -> dict[str, float | int]:
        """Only the limits the bundle set."""
        return self.model_dump(exclude_none=True)


class BundleManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    description: str = Field("", max_length=2000)
    entrypoint: str = "main.py"
    tools: tuple[str, ...] = Field((), max_length=256)
    policy: dict[str, Any] | None = None
    limits: BundleLimits = BundleLimits()

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        if not isinstance(v, str) or not NAME_PATTERN.match(v):
            raise ValueError("must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit")
        return v

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            raise ValueError(f'must be a string; quote it, e.g. version: "{v}"')
        if not isinstance(v, str):  # checked as the string it is: never a value made a string after the check
            raise ValueError("must be a string")
        # isprintable: also C1 controls, line/paragraph separators, bidi overrides, lone surrogates (logs, UI)
        if isinstance(v, str) and (not v.strip() or len(v) > 64 or not v.isprintable()):
            raise ValueError("must be 1-64 printable characters")
        return v

    @field_validator("description", mode="before")
    @classmethod
    def _description(cls, v: Any) -> Any:
        # lines and tabs are fine in a description; a bidi override (U+202E) or an escape sequence shows it
        # as something else than it is, in the UI and any listing (the version already refused them)
        if v is not None and not isinstance(v, str):
            raise ValueError("must be a string")
        bad = hidden_char(v, "\n\t") if isinstance(v, str) else None
        if bad is not None:
            raise ValueError(f"must not hold control or format characters (U+{ord(bad):04X})")
        return "" if v is None else v

    @field_validator("entrypoint", mode="before")
    @classmethod
    def _entrypoint(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        parts = v.split("/")
        if (
            not v.endswith(".py") or v.startswith("/") or "\\" in v or len(v) > 255 or _CONTROL.search(v)
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
        ):
            raise ValueError("must be a relative path to a .py file inside the bundle (no '..', no hidden parts)")
        return v

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, v: Any) -> Any:
        if v is None:
            return ()
        if isinstance(v, list):
            for item in v:
                if not isinstance(item, str) or not _TOOL_PATTERN.match(item):
                    raise ValueError(f"{item!r} is not a tool name or glob (letters, digits, '_.-*?')")
        return v

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, dict):
            raise ValueError("must be a mapping with a 'rules:' list")
        if isinstance(v, dict) and "rules" in v and not isinstance(v["rules"], list):
            raise ValueError("'rules' must be a list")
        return v

    @field_validator("limits", mode="before")
    @classmethod
    def _limits(cls, v: Any) -> Any:
        return {} if v is None else v

    def allows_tool(self, tool: str) -> bool:
        """The bundle's own narrowing layer: only declared tools (globs) may be called."""
        return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.tools)

    def to_record(self) -> dict[str, Any]:
        """JSON-safe form stored with the version; ``model_validate`` reads it back."""
        return self.model_dump(mode="json")


def _fail(message: str, errors: list[dict[str, Any]] | None = None) -> StockadeError:
    extra: dict[str, Any] = {"errors": errors} if errors else {}
    return StockadeError("bundle.invalid", message, **extra)


def _where(line: int | None) -> str:
    return f"{MANIFEST_FILE} line {line}" if line else MANIFEST_FILE


def _validation_error(exc: ValidationError, node: Any) -> StockadeError:
    errors: list[dict[str, Any]] = []
    for err in exc.errors()[:_MAX_ERRORS]:
        loc = tuple(err.get("loc", ()))
        field = ".".join(str(p) for p in loc)
        msg = "unknown key" if err.get("type") == "extra_forbidden" else str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        errors.append({"line": line_of(node, loc), "field": field, "message": msg})
    text = "; ".join(f"{_where(e['line'])}: {e['field'] or 'document'}: {e['message']}" for e in errors)
    return _fail(text, errors)


def _check_policy(manifest: BundleManifest, node: Any) -> None:
    if manifest.policy is None:
        return
    try:
        from supervisor.policy import load_bundle_policy  # type: ignore[attr-defined]
    except ImportError:  # the policy engine is optional here; the raw shape was checked above
        return
    try:
        load_bundle_policy(manifest.policy, source=f"bundle {manifest.name}")
    except Exception as exc:  # untrusted input: whatever the engine refuses, the bundle is refused (fail closed)
        detail = exc.detail if isinstance(exc, StockadeError) else (str(exc) or type(exc).__name__)
        line = line_of(node, ("policy",))
        raise _fail(f"{_where(line)}: policy: {detail}", [{"line": line, "field": "policy", "message": detail}]) from None


def parse_manifest(text: str | bytes) -> BundleManifest:
    """Validate the text of a ``bundle.yaml``. Raises ``StockadeError('bundle.invalid')`` with line numbers."""
    if len(text) > _MAX_MANIFEST_BYTES:
        raise _fail(f"{MANIFEST_FILE} is larger than {_MAX_MANIFEST_BYTES} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(f"{MANIFEST_FILE} is not UTF-8 text") from None
    try:
        data, node = load_document(text)
    except YamlProblem as p:
        raise _fail(f"{_where(p.line)}: {p.message}", [{"line": p.line, "field": "", "message": p.message}]) from None
    except (ValueError, OverflowError) as exc:  # a scalar YAML cannot construct: `2001-13-45`, a 5000-digit int
        message = f"a value cannot be read: {str(exc)[:200]}"
        raise _fail(f"{MANIFEST_FILE}: {message}", [{"line": None, "field": "", "message": message}]) from None
    if data is None:
        raise _fail(f"{MANIFEST_FILE} is empty")
    if not isinstance(data, dict):
        raise _fail(f"{_where(node.start_mark.line + 1 if node else None)}: the top level must be a mapping")
    if has_nul(data):  # stored with the version: SQLite would keep it, PostgreSQL cannot (supervisor/storable.py)
        raise _fail(f"{MANIFEST_FILE}: NUL characters (U+0000) are not accepted")
    try:
        manifest = BundleManifest.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, node) from None
    _check_policy(manifest, node)
    return manifest


def _accepts_one_argument(fn: ast.AsyncFunctionDef) -> bool:
    a = fn.args
    positional = len(a.posonlyargs) + len(a.args)
    required = positional - len(a.defaults)
    kw_required = any(d is None for d in a.kw_defaults)
    return (positional >= 1 or a.vararg is not None) and required <= 1 and not kw_required


def _binds_main(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return stmt.name == "main"
    if isinstance(stmt, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == "main" for t in stmt.targets)
    if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        return isinstance(stmt.target, ast.Name) and stmt.target.id == "main"
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return any((al.asname or al.name.split(".")[0]) == "main" for al in stmt.names)
    return False


def check_entrypoint(source: bytes, path: str = "main.py") -> None:
    """The entrypoint must parse and define ``async def main(ctx)`` at module level (never executed here)."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise _fail(f"{path} line {exc.lineno}: {exc.msg}" if exc.lineno else f"{path}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise _fail(f"{path} cannot be parsed: {type(exc).__name__}") from None
    main: ast.stmt | None = None
    for stmt in tree.body:  # the last top-level binding of `main` is the one the runtime will see
        if _binds_main(stmt):
            main = stmt
    if main is None:
        raise _fail(f"{path} must define `async def main(ctx)` at module level")
    if not isinstance(main, ast.AsyncFunctionDef):
        raise _fail(f"{path} line {main.lineno}: main must be written `async def main(ctx)`")
    if not _accepts_one_argument(main):
        raise _fail(f"{path} line {main.lineno}: main must take exactly one argument, ctx")


def validate_bundle_files(files: Mapping[str, bytes]) -> BundleManifest:
    """Validate a bundle given as {relative posix path: bytes}: manifest plus entrypoint."""
    raw = files.get(MANIFEST_FILE)
    if raw is None:
        raise _fail(f"{MANIFEST_FILE} is missing at the top of the bundle")
    manifest = parse_manifest(raw)
    source = files.get(manifest.entrypoint)
    if source is None:
        line_hint = "" if manifest.entrypoint == "main.py" else " (set by entrypoint:)"
        raise _fail(f"entrypoint {manifest.entrypoint} is missing from the bundle{line_hint}")
    check_entrypoint(source, manifest.entrypoint)
    return manifest
