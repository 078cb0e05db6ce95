"""Arguments against a pinned ``input_schema``, before policy sees the call (bad -> ``input.invalid``).

Two layers. A small explicit check of ``required``, top-level property types
and ``additionalProperties: false`` gives short, stable messages. Then the full
JSON Schema check (``jsonschema``, already a dependency of the MCP SDK) when the
pinned schema is itself valid; a schema that is not valid JSON Schema is held
to the small check only (the server's problem, not a reason to refuse every call).
``jsonschema`` is given an empty registry, so a remote ``$ref`` is unresolvable
(the small check stands) and a schema cannot make the supervisor fetch anything:
by default jsonschema still fetched it with urllib.

The schema comes from the MCP server and the check runs on the event loop, so
it must be cheap whatever the schema: regexes (``pattern``,
``patternProperties``, and the lookups ``additionalProperties`` makes) run on
RE2, linear in the input, instead of Python's backtracking ``re`` (``^(a+)+$``
against 30 characters froze every tenant's calls for minutes); ``uniqueItems``
is one pass instead of jsonschema's pairwise comparison; and each full check
may evaluate at most ``MAX_STEPS`` keywords (nested ``anyOf`` over a shared
``$ref`` is 2**depth evaluations in a 1 KB schema). A check that runs out of
steps, or a regex RE2 cannot run, leaves that part to the MCP server, which
validates its own arguments anyway; ``unevaluatedProperties`` is left to it too.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from supervisor.errors import StockadeError

__all__ = ["MAX_STEPS", "check_arguments"]

_VALIDATORS: OrderedDict[str, Any] = OrderedDict()  # def_hash -> jsonschema validator, or None if the schema is invalid
_MAX_CACHED = 1024
MAX_STEPS = 10_000  # keyword evaluations in one full check: 0.05-0.15 s of jsonschema
_steps: ContextVar[list[int] | None] = ContextVar("mcp_schema_steps", default=None)
_SURROGATE = re.compile("[\ud800-\udfff]")


class _OutOfSteps(Exception):
    pass


def _is_type(value: Any, t: str) -> bool:
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "null":
        return value is None
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    if t == "number":
        return (isinstance(value, int | float) and not isinstance(value, bool)) and not (isinstance(value, float) and not math.isfinite(value))
    return True  # an unknown type name constrains nothing here; the full check decides


def _bad(tool: str, msg: str) -> StockadeError:
    return StockadeError("input.invalid", f"{tool}: {msg}")


def _small_check(schema: dict[str, Any], args: dict[str, Any], tool: str) -> None:
    required = schema.get("required")
    if isinstance(required, list):
        missing = [r for r in required if isinstance(r, str) and r not in args]
        if missing:
            raise _bad(tool, f"missing required argument(s): {', '.join(missing[:10])}")
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    for key, value in args.items():
        spec = props.get(key)
        if not isinstance(spec, dict):
            # a patternProperties name is no extra: the full check decides those
            if schema.get("additionalProperties") is False and not schema.get("patternProperties"):
                raise _bad(tool, f"unexpected argument {key!r}")
            continue
        t = spec.get("type")
        types = [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if isinstance(t, list) else []
        if types and not any(_is_type(value, x) for x in types):
            raise _bad(tool, f"argument {key!r} must be of type {' or '.join(types)}")


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    """The RE2 program for a schema regex, or None when RE2 cannot run it (lookaround, backreferences)."""
    import re2

    opts = re2.Options()
    opts.log_errors = False
    try:
        return re2.compile(pattern, opts)
    except Exception:  # re2.error
        return None


def _search(pattern: Any, text: str) -> bool | None:
    """Whether ``pattern`` matches somewhere in ``text``; None when it cannot be run."""
    prog = _regex(pattern) if isinstance(pattern, str) else None
    if prog is None:
        return None
    try:
        return prog.search(text) is not None
    except UnicodeEncodeError:  # lone surrogates: RE2 takes UTF-8
        return prog.search(_SURROGATE.sub("\ufffd", text)) is not None


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Any:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and _search(pattern, instance) is False:
        yield ValidationError(f"{instance[:80]!r} does not match {str(pattern)[:80]!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object") or not isinstance(patterns, dict):
        return
    for pattern, subschema in patterns.items():
        for k, v in instance.items():
            if _search(pattern, k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _additional_properties(validator: Any, ap: Any, instance: Any, schema: Any) -> Any:
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    props = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    # a property a regex RE2 cannot run might match is given the benefit of the doubt
    extras = [k for k in instance if k not in props and not any(_search(p, k) is not False for p in patterns)]
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        yield ValidationError(f"unexpected argument(s): {', '.join(repr(k[:80]) for k in sorted(extras)[:10])}")


def _json_key(value: Any) -> Any:
    """A hashable key equal for JSON-equal values (1 == 1.0, True != 1), for a one-pass uniqueItems."""
    if isinstance(value, bool) or value is None:
        return ("c", value)
    if isinstance(value, int | float):
        return ("n", value)  # equal numbers hash equal
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, dict):
        return ("o", frozenset((k, _json_key(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("a", tuple(_json_key(v) for v in value))
    return ("?", id(value))


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Any:
    from jsonschema.exceptions import ValidationError

    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        key = _json_key(item)
        if key in seen:
            yield ValidationError("the array has non-unique elements")
            return
        seen.add(key)


def _left_to_the_server(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
    return ()


_SAFE = {"pattern": _pattern, "patternProperties": _pattern_properties,
         "additionalProperties": _additional_properties, "uniqueItems": _unique_items,
         "unevaluatedProperties": _left_to_the_server}


def _counted(keyword: Any) -> Any:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        left = _steps.get()
        if left is not None:
            left[0] -= 1
            if left[0] < 0:
                raise _OutOfSteps
        return keyword(validator, value, instance, schema)
    return run


@lru_cache(maxsize=16)
def _bounded(cls: Any) -> Any:
    """``cls`` with the safe keywords above and every keyword counted against the step budget."""
    from jsonschema.validators import extend

    fns = {**cls.VALIDATORS, **{k: f for k, f in _SAFE.items() if k in cls.VALIDATORS}}
    return extend(cls, {k: _counted(f) for k, f in fns.items()})


def _validator(def_hash: str, schema: dict[str, Any]) -> Any:
    if def_hash in _VALIDATORS:
        _VALIDATORS.move_to_end(def_hash)
        return _VALIDATORS[def_hash]
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for
    from referencing import Registry

    try:
        cls = validator_for(schema, default=Draft202012Validator)
        cls.check_schema(schema)
        # An empty registry: left to its default, jsonschema fetched a remote $ref with urllib (deprecated, still
        # on) - any URL the MCP server chose, metadata endpoints included, from the event loop, no timeout.
        v: Any = _bounded(cls)(schema, registry=Registry())
    except (SchemaError, TypeError, ValueError, LookupError, RecursionError):  # ~100 levels deep: RecursionError
        v = None
    _VALIDATORS[def_hash] = v
    if len(_VALIDATORS) > _MAX_CACHED:
        _VALIDATORS.popitem(last=False)
    return v


def check_arguments(schema: Any, args: Any, *, tool: str, def_hash: str) -> None:
    """Raise ``input.invalid`` unless ``args`` (a JSON object) satisfies the pinned ``schema``."""
    if not isinstance(args, dict):
        raise _bad(tool, "arguments must be a JSON object")
    if not isinstance(schema, dict):
        return
    _small_check(schema, args, tool)
    v = _validator(def_hash, schema)
    if v is None:
        return
    from jsonschema.exceptions import best_match

    budget = _steps.set([MAX_STEPS])
    try:
        err = best_match(v.iter_errors(args))
    except Exception:  # out of steps, too deep, an unresolvable $ref: the small check stands
        return
    finally:
        _steps.reset(budget)
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "arguments"
        raise _bad(tool, f"{where}: {str(err.message)[:300]}")
