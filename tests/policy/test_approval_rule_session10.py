"""The ``approval:`` member of a require_approval rule (separation of duties, N approvers): strict,
with line numbers, in the engine, through `stockade policy validate`; the compiled rule carries its terms."""

from __future__ import annotations

import pytest

from app import cli
from supervisor.policy import ApprovalSpec, load_bundle_policy, load_policy, validate_policy_text

DOC = """version: 1
rules:
  - id: allow-echo
    tool: echo
    verdict: allow
  - id: big-payments
    tool: payments.send
    verdict: {verdict}
    approval: {approval}
"""


def doc(approval: str, verdict: str = "require_approval") -> str:
    return DOC.format(verdict=verdict, approval=approval)


def test_terms_are_compiled_onto_the_rule():
    p = load_policy(doc("{approvers: 2, separate: true}"))
    assert p.approval_spec("big-payments") == ApprovalSpec(approvers=2, separate=True)
    assert p.approval_spec("allow-echo") is None  # not a require_approval rule
    assert p.approval_spec("nope") is None


@pytest.mark.parametrize("approval, want", [
    ("{}", ApprovalSpec(1, False)),
    ("{approvers: 5}", ApprovalSpec(5, False)),
    ("{separate: true}", ApprovalSpec(1, True)),
    ("{approvers: 1, separate: false}", ApprovalSpec(1, False)),
])
def test_valid_terms(approval, want):
    assert load_policy(doc(approval)).approval_spec("big-payments") == want


def test_a_rule_without_terms_is_decided_as_before():
    p = load_policy("version: 1\nrules:\n  - id: r\n    tool: echo\n    verdict: require_approval\n")
    assert p.approval_spec("r") == ApprovalSpec(1, False)


@pytest.mark.parametrize("approval, verdict, line, fragment", [
    ("{approvers: 0}", "require_approval", 9, "approval.approvers: Input should be greater than or equal to 1"),
    ("{approvers: 6}", "require_approval", 9, "approval.approvers: Input should be less than or equal to 5"),
    ("{approvers: '2'}", "require_approval", 9, "approval.approvers: must be a whole number"),
    ("{approvers: true}", "require_approval", 9, "approval.approvers: must be a whole number"),
    ("{approvers: 2.0}", "require_approval", 9, "approval.approvers: must be a whole number"),
    ("{approvers: null}", "require_approval", 9, "approval.approvers: must be a whole number"),
    ("{separate: 'yes'}", "require_approval", 9, "approval.separate: must be true or false"),
    ("{separate: 1}", "require_approval", 9, "approval.separate: must be true or false"),
    ('{separate: "true"}', "require_approval", 9, "approval.separate: must be true or false"),  # a string
    ("{approvers: 2, quorum: 2}", "require_approval", 9, "approval: unknown key 'quorum'"),
    ("[2]", "require_approval", 9, "approval: must be a mapping"),
    ("2", "require_approval", 9, "approval: must be a mapping"),
    ("{approvers: 2}", "allow", 6, "approval ({approvers: N, separate: true|false}) is allowed only with verdict require_approval"),
    ("{separate: true}", "deny", 6, "allowed only with verdict require_approval"),
])
def test_bad_terms_are_refused_with_their_line(approval, verdict, line, fragment):
    errors = validate_policy_text(doc(approval, verdict))
    assert len(errors) == 1 and errors[0].startswith(f"line {line}: rules[1]") and fragment in errors[0], errors


def test_bundle_layer_takes_the_same_terms_and_the_same_checks():
    p = load_bundle_policy({"rules": [{"id": "b", "tool": "echo", "verdict": "require_approval",
                                       "approval": {"approvers": 3, "separate": True}}]})
    assert p is not None and p.approval_spec("b") == ApprovalSpec(3, True)
    with pytest.raises(Exception) as err:
        load_bundle_policy({"rules": [{"id": "b", "tool": "echo", "verdict": "require_approval",
                                       "approval": {"approvers": 9}}]})
    assert "approval.approvers" in str(err.value)


def test_cli_validate_names_the_line(capsys, tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(doc("{approvers: 2, separate: true}"))
    bad.write_text(doc("{approvers: 6, separate: 'yes'}"))
    assert cli.main(["policy", "validate", str(good)]) == 0
    capsys.readouterr()
    assert cli.main(["policy", "validate", str(bad)]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith(f"{bad}: line 9: rules[1].approval.") for ln in lines), err
    assert "approvers" in lines[0] + lines[1] and "separate" in lines[0] + lines[1]
    assert "Traceback" not in err


def _req(tool: str = "payments.send"):
    from supervisor.policy import PolicyRequest

    return PolicyRequest(tool=tool, args={}, resource=None, role="member", user=None, project=None, history=())


@pytest.mark.parametrize("tenant_terms, bundle_terms, named", [
    ("{approvers: 1}", {"approvers": 2}, "bundle-rule"),  # more people
    ("{approvers: 2}", {"approvers": 2, "separate": True}, "bundle-rule"),  # separation on top
    ("{approvers: 2, separate: true}", {"approvers": 2, "separate": True}, "big-payments"),  # a tie keeps the tenant's
    ("{approvers: 3}", {"approvers": 2, "separate": True}, "big-payments"),  # neither dominates: the tenant's
    ("{approvers: 2, separate: true}", {"approvers": 1}, "big-payments"),  # a bundle cannot loosen the terms
])
def test_when_both_layers_ask_for_approval_the_stricter_terms_are_named(tenant_terms, bundle_terms, named):
    """A bundle narrowing the tenant's approval (more approvers, separation) was dropped: on a tie of
    verdicts the tenant's rule was named, and the approval step applies the named rule's terms."""
    from supervisor.policy import evaluate_layers

    tenant = load_policy(doc(tenant_terms))
    bundle = load_bundle_policy({"rules": [{"id": "bundle-rule", "tool": "payments.send", "verdict": "require_approval",
                                            "approval": bundle_terms}]})
    v = evaluate_layers(tenant, bundle, _req())
    assert v.verdict == "require_approval" and v.rule_id == named
    assert v.approval == (bundle if named == "bundle-rule" else tenant).approval_spec(named)
