"""The policy engine (pure domain: no web framework, no database driver, nothing executed).

Policy language
===============

A tenant's policy is one YAML document (``PUT /v1/policy``)::

    version: 1                     # required, must be 1
    rules:                         # in order; first match wins; no match = deny
      - id: no-huge-echo           # unique; [A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}
        tool: echo                 # tool glob (or a list): * matches anything, dots too
        resource: "/ws/**"         # optional glob over the RESOLVED resource: ** crosses /, * does not
        role: [admin, member]      # optional principal matchers, a value or a list:
        user: u_123                #   role, user, project (a call without a user/project
        project: p_1               #   never matches a user/project matcher); roles are exactly
        #   admin, member, approver, viewer (a key's roles): any other name (Admin, admn) is refused
        when:                      # optional; every condition must hold
          args.n: {gt: 100}        # eq ne in not_in gt gte lt lte contains matches
        content: "(?i)password"    # optional RE2 pattern(s) searched in every argument string and key
        velocity: {max: 5, per_s: 60, scope: run}   # matches when this call would be the 6th in 60 s
        #   scope: run counts this run's calls; scope: user counts the user's (else the key's) calls in all
        #   their runs - on every worker (production: the history is in Redis)
        order: {after: kb.search}  # matches while no kb.search has completed in this run
        # order: {not_after: storage.read}  # matches once storage.read passed policy in this run
        verdict: deny              # allow | deny | require_approval | delay | downgrade
        reason: too big            # shown to the bundle and recorded in the audit log
        # delay_s: 5               # with verdict delay (0 < s <= 60): wait, then continue
        # downgrade: {args.model: openai/gpt-4.1-mini}  # with verdict downgrade: replace arguments
        # approval: {approvers: 2, separate: true}  # with verdict require_approval only: approvers (1-5,
        #   default 1) distinct keys - and distinct users, for keys bound to one - must approve; one reject
        #   rejects. separate: the key that started the run, any key bound to the run's user and any key made
        #   after the request may not decide
    prices: {echo: 0.001, "mcp.*": 0.01}   # USD per call; exact name first, else first matching glob;
    #   0, or 0.000001 (one micro-USD) to 1000000000: a smaller positive price would round to 0 (free)
    llm_prices: {openai/gpt-4.1-mini: {input_per_mtok: 0.4, output_per_mtok: 1.6}}  # USD, 0 to 100000
    limits: {tenant_per_s: 20, tenant_burst: 40}   # rate limits (supervisor.limits names): tighten the settings
    #   (STOCKADE_RATE_*), never lift them - the lower applies
    egress: {}                     # reserved; no keys yet

Unknown keys anywhere are errors. Matching and its types are strict (see
``conditions``): ``"2000"`` is not a number, booleans are not numbers, NaN and
inf never compare true, a missing path never matches. Tool names must be
ASCII ``[a-z0-9_.-]{1,128}``; look-alikes (``Echo``, full-width, zero-width
joiners, NUL, trailing space) are refused, never normalised.

YAML is read as YAML 1.2 (core schema), the same for policies, ``bundle.yaml`` and the
LLM pricing file (``supervisor/yaml12.py``): booleans are ``true``/``false`` (``True``,
``TRUE``), integers decimal, ``0o17`` or ``0x1F``, floats ``1.5``, ``1e3``, ``1e-3``.
A plain value YAML 1.1 reads otherwise - ``yes no on off y n`` in any case, base-60
``12:30``/``1:30:00``, leading-zero ``010``, ``1_000``, ``0b101``, a date - is refused
with its line (``policy.invalid``), never guessed: quote it (``in: ["NO", "SE"]``) for
a string. A policy stored before this rule is read as it was stored (YAML 1.1) until
it is stored again.

Names: a call may have aliases besides its name (``PolicyRequest.aliases``):
every MCP call is ``mcp.<server>.<tool>`` and ``mcp.call``, whichever the
bundle spelled (the chain turns ``mcp.call`` into the call it stands for), so a
rule, an order glob or a price on either name applies to both spellings
(supervisor/README.md, "One call, every name").

Layers: the shipped default (``default.yaml``: allows echo, llm.chat, kb.*,
storage.*, code.run; no egress) applies to a tenant without a policy; a
tenant policy *replaces* it. A bundle's ``policy: {rules: [...]}`` can only
narrow: see ``evaluate_layers``. Every verdict names its rule id and layer
(``rule_id`` None = no rule matched). The chain's policy step judges a
downgraded call again with its replaced arguments (and resource): a
downgrade, from either layer, never runs a call the policy would refuse.

Bounds (policies are untrusted input): documents <= 512 KiB, nesting <= 32,
no YAML tags/anchors/aliases/merge keys, <= 1000 rules, <= 4096 conditions,
<= 32 rules using regexes; a pattern <= 512 characters, no nested
quantifiers, backreferences or lookaround, run by RE2 (linear time; stdlib
``re`` needs 7 s for ``.*a.*b`` on 4 KB). One evaluation scans <= 1 Mi
characters / 10,000 argument values and spends <= 2**27 regex units
(characters x program size, content, ``matches`` and resource globs alike;
< ~0.5 s worst case) and <= 100,000 other steps;
a rule that cannot be decided within that denies the call, naming itself.
Large arguments meeting regex rules are evaluated on a thread (RE2 releases
the GIL). The version of a policy is the sha256 of its canonical JSON form.
"""

from __future__ import annotations

from supervisor.policy._yaml import MAX_POLICY_BYTES
from supervisor.policy.evaluate import evaluate, evaluate_layers
from supervisor.policy.loader import (
    PolicyError,
    default_policy,
    load_bundle_policy,
    load_policy,
    validate_policy_text,
)
from supervisor.policy.model import (
    NO_MATCH,
    RESTRICTIVENESS,
    VERDICTS,
    ApprovalSpec,
    Policy,
    PolicyRequest,
    Rule,
    Verdict,
)
from supervisor.policy.names import is_resolved_tool_name, is_valid_tool_name

__all__ = [
    "MAX_POLICY_BYTES", "NO_MATCH", "RESTRICTIVENESS", "VERDICTS", "ApprovalSpec", "Policy", "PolicyError", "PolicyRequest", "Rule", "Verdict",
    "default_policy", "evaluate", "evaluate_layers", "is_resolved_tool_name", "is_valid_tool_name", "load_bundle_policy", "load_policy",
    "validate_policy_text",
]
