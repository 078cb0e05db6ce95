"""Arguments against a pinned ``input_schema``, before policy sees the call (bad -> ``input.invalid``).

Two layers. A small explicit check of ``required``, top-level property types
and ``additionalProperties: false`` gives short, stable messages. Then the full
JSON Schema check (``jsonschema``, already a dependency of the MCP SDK) when the
pinned schema is itself valid; a schema that is not valid JSON Schema is held
to the small check only (the server's problem, not a reason to refuse every call).
``jsonschema`` resolves no remote ``$ref`` (no retrieval is configured), so a
schema cannot make the supervisor fetch anything.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from supervisor.errors import StockadeError

__all__ = ["check_arguments"]

_VALIDATORS: OrderedDict[str, Any] = OrderedDict()  # def_hash -> jsonschema validator, or None if the schema is invalid
_MAX_CACHED = 1024


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
            if schema.get("additionalProperties") is False:
                raise _bad(tool, f"unexpected argument {key!r}")
            continue
        t = spec.get("type")
        types = [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if isinstance(t, list) else []
        if types and not any(_is_type(value, x) for x in types):
            raise _bad(tool, f"argument {key!r} must be of type {' or '.join(types)}")


def _validator(def_hash: str, schema: dict[str, Any]) -> Any:
    if def_hash in _VALIDATORS:
        _VALIDATORS.move_to_end(def_hash)
        return _VALIDATORS[def_hash]
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        cls = validator_for(schema, default=Draft202012Validator)
        cls.check_schema(schema)
        v: Any = cls(schema)
    except (SchemaError, TypeError, ValueError, LookupError):
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

    try:
        err = best_match(v.iter_errors(args))
    except Exception:  # e.g. an unresolvable $ref: the small check stands
        return
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "arguments"
        raise _bad(tool, f"{where}: {str(err.message)[:300]}")
