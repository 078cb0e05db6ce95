"""Rate limits: which rules a call must pass, and the GCRA arithmetic the adapters share.

The adapters live in ``supervisor.stores.memory`` / ``supervisor.stores.redis``;
the chain step in ``supervisor.chain.ratelimit``.
"""

from supervisor.limits.gcra import GcraResult, gcra_check, validate_rules
from supervisor.limits.rules import LIMIT_NAMES, LLM_TOOL, rule_kind, rules_for_call, validate_overrides

__all__ = [
    "LIMIT_NAMES", "LLM_TOOL", "GcraResult", "gcra_check", "rule_kind", "rules_for_call",
    "validate_overrides", "validate_rules",
]
