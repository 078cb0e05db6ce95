"""The rate rules one tool call must pass, from settings and the tenant's overrides.

Rules (keys are prefixed by the adapter; parts are escaped so ``:`` in a tool
name cannot make two keys collide):

==========  =====================================  ======================================
kind        key                                    rate / burst
==========  =====================================  ======================================
tenant      ``t:{tenant}``                         tenant_per_s / tenant_burst
tenant_hour ``th:{tenant}``                        tenant_per_hour/3600 / tenant_per_hour
principal   ``p:{tenant}:{principal}``             user_per_s / user_burst
tool        ``tt:{tenant}:{tool}``                 tool_per_s / tool_burst
llm_tokens  ``lt:{tenant}:{principal}``            llm_tokens_per_min/60 / llm_tokens_per_min,
                                                   cost = estimated tokens (``llm.chat`` only)
==========  =====================================  ======================================

The *principal* is the run's user when the key is bound to one (``u.{id}``),
else the API key that started the run (``k.{id}``), else the run itself
(``r.{id}``). The key is preferred over the run so that a client cannot
multiply its quota by starting more runs.

A token estimate larger than the per-minute bucket is charged as the whole
bucket: the call waits for a full bucket instead of being refused forever.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from supervisor.chain.base import Binding
from supervisor.errors import StockadeError
from supervisor.settings import Settings
from supervisor.stores.records import RateRule

__all__ = ["LIMIT_NAMES", "LLM_TOOL", "rule_kind", "rules_for_call", "validate_overrides"]

LLM_TOOL = "llm.chat"

# Override names (a tenant policy's ``limits:`` section) -> is it an integer count?
# ``rate_``-prefixed spellings (the settings field names) are accepted too.
LIMIT_NAMES: dict[str, bool] = {
    "tenant_per_s": False,
    "tenant_burst": True,
    "user_per_s": False,
    "user_burst": True,
    "tool_per_s": False,
    "tool_burst": True,
    "tenant_per_hour": True,
    "llm_tokens_per_min": True,
}

_KINDS = {"t": "tenant", "th": "tenant_hour", "p": "principal", "tt": "tool", "lt": "llm_tokens"}


def _part(value: str) -> str:
    return value.replace("%", "%25").replace(":", "%3A")


def rule_kind(key: str) -> str:
    """The limit a rule key belongs to (``tenant``, ``tool`` ...), safe to show a tenant."""
    return _KINDS.get(key.split(":", 1)[0], "unknown")


def validate_overrides(overrides: Mapping[str, Any] | None) -> dict[str, float | int]:
    """Check a ``limits:`` mapping; returns it keyed by the short names.

    Raises ``policy.invalid`` naming the first bad entry (unknown name, not a
    positive finite number, a fractional count).
    """
    out: dict[str, float | int] = {}
    for raw_name, value in (overrides or {}).items():
        name = str(raw_name)
        short = name[len("rate_"):] if name.startswith("rate_") else name
        if short not in LIMIT_NAMES:
            raise StockadeError("policy.invalid", f"limits: unknown limit {name!r}", field=f"limits.{name}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise StockadeError("policy.invalid", f"limits.{name} must be a positive number", field=f"limits.{name}")
        if LIMIT_NAMES[short]:
            if value != int(value) or value < 1:
                raise StockadeError("policy.invalid", f"limits.{name} must be a whole number >= 1", field=f"limits.{name}")
            value = int(value)
        out[short] = value
    return out


def _principal(binding: Binding) -> str:
    if binding.user_id:
        return "u." + binding.user_id
    if binding.key_id:
        return "k." + binding.key_id
    return "r." + binding.run_id


def rules_for_call(
    settings: Settings,
    binding: Binding,
    tool_name: str,
    overrides: Mapping[str, Any] | None = None,
    tokens: int = 0,
) -> list[RateRule]:
    """Every rule one call of ``tool_name`` by ``binding`` must pass (all or nothing)."""
    o = validate_overrides(overrides)

    def get(name: str) -> Any:
        # a tenant's policy tightens the operator's limits, never lifts them (they guard the shared node)
        ceiling = getattr(settings, "rate_" + name)
        return min(o[name], ceiling) if name in o else ceiling

    tenant = _part(binding.tenant_id)
    principal = _part(_principal(binding))
    per_hour = int(get("tenant_per_hour"))
    rules = [
        RateRule(f"t:{tenant}", float(get("tenant_per_s")), int(get("tenant_burst"))),
        RateRule(f"th:{tenant}", per_hour / 3600.0, per_hour),
        RateRule(f"p:{tenant}:{principal}", float(get("user_per_s")), int(get("user_burst"))),
        RateRule(f"tt:{tenant}:{_part(tool_name)}", float(get("tool_per_s")), int(get("tool_burst"))),
    ]
    if tool_name == LLM_TOOL and tokens > 0:
        per_min = int(get("llm_tokens_per_min"))
        rules.append(RateRule(f"lt:{tenant}:{principal}", per_min / 60.0, per_min, cost=min(int(math.ceil(tokens)), per_min)))
    return rules
