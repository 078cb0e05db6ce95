"""Text -> validated, compiled ``Policy``; every problem reported as ``line N: message``."""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from supervisor.errors import StockadeError
from supervisor.policy._yaml import LoadedYaml, YamlProblem, load_yaml
from supervisor.policy.model import ApprovalSpec, Order, Policy, Rule, Velocity
from supervisor.policy.schema import BundlePolicyDoc, PolicyDoc, RuleDoc

__all__ = [
    "MAX_PATTERN_RULES", "PolicyError", "default_policy", "load_bundle_policy", "load_policy",
    "validate_policy_text",
]

MAX_PATTERN_RULES = 32  # rules using content/matches
MAX_CONDITIONS = 4096  # ``when`` operators in the whole policy: bounds the scalar work of one evaluation
MAX_ERRORS = 50
Path = tuple[str | int, ...]


class PolicyError(StockadeError):
    """An invalid policy. ``errors`` lists every problem found, each ``line N: message``
    (``message`` alone where the source has no lines, e.g. a bundle manifest)."""

    def __init__(self, errors: list[str], *, source: str = "policy") -> None:
        self.errors = list(errors)[:MAX_ERRORS] or ["invalid policy"]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__("policy.invalid", f"{source}: {self.errors[0]}{more}", errors=self.errors)


def load_policy(yaml_text: str, *, source: str = "policy", layer: str = "tenant", stored: bool = False) -> Policy:
    """Parse and validate a tenant policy document (YAML). Raises ``PolicyError``; runs nothing.

    ``stored``: a document already stored, which an older version accepted: ``version: 1.0`` or ``true``
    (refused since a104fb1, as any new document still is) reads as 1 - else every call of its tenant was
    refused ``policy.unavailable`` after an upgrade until an admin stored it again. Its version (the hash
    of the document as written) is unchanged. Its plain scalars are read as YAML 1.1, as when it was
    stored: a stored ``in: [NO, SE]`` keeps its meaning (and its tenant's calls keep working) until an
    admin stores the document again, which reads YAML 1.2 and refuses the ambiguous ``NO``.

    A stored document that a new one would pass as it is (it has no such double meaning) is read exactly as a
    new one: as ``PUT /v1/policy`` checked it. Read as YAML 1.1 instead, ``eq: 1e3`` was the string "1e3" (a
    deny rule that never fired), ``prices: {echo: 1e-3}`` refused every call of the tenant, and the records
    named a version no stored policy had.
    """
    if stored:
        try:
            return load_policy(yaml_text, source=source, layer=layer)
        except PolicyError:
            pass  # stored by an older version, which read it as YAML 1.1: read as then
    try:
        loaded = load_yaml(yaml_text, yaml11=stored)
    except YamlProblem as exc:
        raise PolicyError([str(exc)], source=source) from None
    if not isinstance(loaded.data, dict):
        raise PolicyError([f"line {loaded.line_for(())}: a policy is a mapping with version: 1 and rules: [...]"],
                          source=source)
    legacy = stored and loaded.data.get("version") in (1.0, True) and type(loaded.data.get("version")) is not int
    return _build(PolicyDoc, loaded, source=source, layer=layer,
                  data={**loaded.data, "version": 1} if legacy else None, stored=stored)


def validate_policy_text(yaml_text: str) -> list[str]:
    """``[]`` if the document is a valid tenant policy, else its errors (``line N: message``)."""
    try:
        load_policy(yaml_text)
    except PolicyError as exc:
        return exc.errors
    return []


def load_bundle_policy(obj: dict[str, Any] | None, *, source: str = "bundle", stored: bool = False) -> Policy | None:
    """A bundle's narrowing layer from the already-parsed ``policy:`` of bundle.yaml (``rules:`` only).

    ``None`` or an empty mapping means the bundle adds no rules. ``stored``: the manifest of a version
    already registered, which checks added since (an unknown role) must not refuse (see ``load_policy``).
    """
    if obj is None or obj == {}:
        return None
    if not isinstance(obj, dict):
        raise PolicyError(["policy: must be a mapping with rules: [...]"], source=source)
    return _build(BundlePolicyDoc, LoadedYaml(data=obj), source=source, layer="bundle", lines=False, stored=stored)


@functools.cache
def default_policy() -> Policy:
    """The shipped policy a tenant without one of its own gets (``supervisor/policy/default.yaml``)."""
    text = resources.files("supervisor.policy").joinpath("default.yaml").read_text("utf-8")
    return load_policy(text, source="default policy", layer="default")


def _build(model: Any, loaded: LoadedYaml, *, source: str, layer: str, lines: bool = True,
           data: Any = None, stored: bool = False) -> Policy:
    try:
        doc = model.model_validate(loaded.data if data is None else data, context={"stored": stored})
    except ValidationError as exc:
        raise PolicyError(_format(exc, loaded, lines), source=source) from None
    problems = _semantic(doc)
    if problems:
        raise PolicyError(sorted((_at(loaded, p, m, lines) for p, m in problems), key=_line_key), source=source)
    rules = tuple(_rule(r, loaded.line_for(("rules", i)) if lines else None) for i, r in enumerate(doc.rules))
    limits = doc.limits.model_dump(exclude_none=True) if getattr(doc, "limits", None) else {}
    return Policy(
        rules=rules, version=_version(loaded.data), layer=layer, source=source,
        prices=MappingProxyType(dict(getattr(doc, "prices", {}))),
        llm_prices=MappingProxyType({k: MappingProxyType(v.model_dump()) for k, v in getattr(doc, "llm_prices", {}).items()}),
        limits=MappingProxyType(limits),
        has_patterns=any(r.content is not None or any(c.op == "matches" for c in r.conditions) for r in rules),
        has_velocity=any(r.velocity is not None for r in rules),
        has_user_velocity=any(r.velocity is not None and r.velocity.scope == "user" for r in rules),
    )


def _semantic(doc: Any) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    seen: dict[str, int] = {}
    pattern_rules = 0
    conditions = 0
    for i, r in enumerate(doc.rules):
        conditions += sum(len(c.model_fields_set) for c in (r.when or {}).values())
        if conditions > MAX_CONDITIONS:
            out.append((("rules", i, "when"), f"at most {MAX_CONDITIONS} conditions in a policy"))
            conditions = -(1 << 30)  # report once
        if r.id in seen:
            out.append((("rules", i, "id"), f"duplicate rule id {r.id!r} (first used by rules[{seen[r.id]}])"))
        seen.setdefault(r.id, i)
        if r.content is not None or any("matches" in c.model_fields_set for c in (r.when or {}).values()):
            pattern_rules += 1
            if pattern_rules == MAX_PATTERN_RULES + 1:
                out.append((("rules", i), f"at most {MAX_PATTERN_RULES} rules may use content or matches"))
    return out


def _rule(r: RuleDoc, line: int | None) -> Rule:
    conditions = []
    for path, cond in (r.when or {}).items():
        conditions.extend(cond.compile(tuple(path.split(".")[1:])))
    order = None
    if r.order is not None:
        order = Order(after=r.order.after, not_after=r.order.not_after)
    return Rule(
        id=r.id, tools=r.tool, verdict=r.verdict, reason=r.reason, resources=r.resource,
        conditions=tuple(conditions), roles=r.role, users=r.user, projects=r.project, content=r.content,
        velocity=Velocity(r.velocity.max, float(r.velocity.per_s), r.velocity.scope) if r.velocity else None,
        order=order, delay_s=float(r.delay_s or 0.0),
        content_cost=max(1, int(r.content.programsize)) if r.content is not None else 1,
        replacements=MappingProxyType({k.split(".", 1)[1]: v for k, v in (r.downgrade or {}).items()}),
        line=line,
        approval=(ApprovalSpec(r.approval.approvers, r.approval.separate) if r.approval is not None else ApprovalSpec())
        if r.verdict == "require_approval" else None,
    )


def _version(data: Any) -> str:
    # Content hash of the canonical JSON form: comments and layout do not change the version.
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


_TYPES = {
    "dict_type": "must be a mapping", "model_type": "must be a mapping", "list_type": "must be a list",
    "string_type": "must be a string", "int_type": "must be a whole number", "float_type": "must be a number",
    "bool_type": "must be true or false", "finite_number": "must be a finite number",
}


def _format(exc: ValidationError, loaded: LoadedYaml, lines: bool) -> list[str]:
    out = []
    for e in exc.errors(include_url=False):
        loc: Path = tuple(p for p in e["loc"] if p != "[key]")
        typ, msg = e["type"], e["msg"]
        if typ == "extra_forbidden":  # point at the key's own line; show the mapping it sits in
            out.append(_at(loaded, loc[:-1], f"unknown key {loc[-1]!r}", lines, line_loc=loc, key=True))
        elif typ == "missing":
            out.append(_at(loaded, loc[:-1], f"missing required key {loc[-1]!r}", lines))
        else:
            msg = _TYPES.get(typ, msg.removeprefix("Value error, "))
            if typ in _TYPES or typ == "literal_error":
                msg += f" (got {_show(e.get('input'))})"
            out.append(_at(loaded, loc, msg, lines))
    return sorted(dict.fromkeys(out), key=_line_key)


def _at(loaded: LoadedYaml, loc: Path, msg: str, lines: bool, *, line_loc: Path | None = None,
        key: bool = False) -> str:
    text = f"{_dotted(loc)}: {msg}" if loc else msg
    if not lines:
        return text
    return f"line {loaded.line_for(loc if line_loc is None else line_loc, key=key)}: {text}"


def _dotted(loc: Path) -> str:
    s = ""
    for p in loc:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _line_key(s: str) -> tuple[int, str]:
    if s.startswith("line "):
        num = s[5:].split(":", 1)[0]
        if num.isdigit():
            return int(num), s
    return 0, s
