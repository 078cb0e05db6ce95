"""Policy documents are untrusted input: every bad one is refused with a line number, nothing runs."""

from __future__ import annotations

import time
from textwrap import dedent

import pytest

from supervisor.errors import StockadeError
from supervisor.limits import LIMIT_NAMES as LIMITER_NAMES
from supervisor.policy import (
    PolicyError,
    default_policy,
    load_bundle_policy,
    load_policy,
    validate_policy_text,
)
from supervisor.policy.cli import validate_file, validate_main
from supervisor.policy.schema import LIMIT_NAMES

GOOD = dedent("""\
    version: 1
    rules:
      - id: no-huge-echo
        tool: echo
        when:
          args.n: {gt: 100}
        verdict: deny
        reason: too big
      - id: echo
        tool: echo
        verdict: allow
    prices:
      echo: 0.001
    """)


def errors(text: str) -> list[str]:
    return validate_policy_text(dedent(text))


def test_good_policy_loads_and_has_a_content_hash_version():
    p = load_policy(GOOD)
    assert [r.id for r in p.rules] == ["no-huge-echo", "echo"]
    assert len(p.version) == 64 and int(p.version, 16) >= 0
    assert p.prices == {"echo": 0.001}
    assert validate_policy_text(GOOD) == []
    # comments and layout are not content; a changed value is
    same = "# a comment\n" + GOOD.replace("prices:\n  echo: 0.001", "prices: {echo: 0.001}")
    assert load_policy(same).version == p.version
    assert load_policy(GOOD.replace("0.001", "0.002")).version != p.version


def test_bad_verdict_is_reported_at_its_line():
    text = """\
        version: 1
        rules:
          - id: a
            tool: echo
            when:
              args.n: {gt: 3}
            verdict: permit
        """
    errs = errors(text)
    assert len(errs) == 1
    assert errs[0].startswith("line 7: rules[0].verdict:")
    assert "permit" in errs[0]
    with pytest.raises(PolicyError) as exc:
        load_policy(dedent(text))
    assert isinstance(exc.value, StockadeError)
    assert exc.value.code == "policy.invalid"
    assert exc.value.errors == errs
    assert exc.value.to_dict()["errors"] == errs


def test_every_error_is_collected_with_its_own_line():
    errs = errors("""\
        version: 1
        rules:
          - id: a
            tool: echo
            verdict: allow
            colour: red
          - id: a
            tool: echo
            verdict: deny
        prices: {echo: -1}
        """)
    # schema errors first; duplicate ids are a second pass (the document must parse first)
    assert errs == [
        "line 6: rules[0]: unknown key 'colour'",
        "line 10: prices.echo: Input should be greater than or equal to 0",
    ]
    errs = errors("""\
        version: 1
        rules:
          - id: a
            tool: echo
            verdict: allow
          - id: a
            tool: echo
            verdict: deny
        """)
    assert errs == ["line 6: rules[1].id: duplicate rule id 'a' (first used by rules[0])"]


@pytest.mark.parametrize("text, line, fragment", [
    ("version: 2\nrules: []\n", 1, "version"),
    ("version: true\nrules: []\n", 1, "version: Input should be 1 (got True)"),  # were accepted (found by fuzzing)
    ("version: 1.0\nrules: []\n", 1, "version: Input should be 1 (got 1.0)"),
    ("rules: []\n", 1, "missing required key 'version'"),
    ("version: 1\n", 1, "missing required key 'rules'"),
    ("version: 1\nrules: []\nextra: 1\n", 3, "unknown key 'extra'"),
    ("version: 1\nrules: {}\n", 2, "must be a list"),
    ("version: 1\nrules:\n  - just-a-string\n", 3, "must be a mapping"),
    ("version: 1\nrules:\n  - id: a\n    tool: 5\n    verdict: allow\n", 4, "tool"),
    ("version: 1\nrules:\n  - id: a\n    tool: Echo\n    verdict: allow\n", 4, "a-z 0-9"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n", 3, "missing required key 'verdict'"),
    ("version: 1\nrules:\n  - id: 'bad id'\n    tool: echo\n    verdict: allow\n", 3, "not a valid name"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: delay\n", 3, "delay_s"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: delay\n    delay_s: 61\n", 6, "less than or equal to 60"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    delay_s: 1\n", 3, "delay_s"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: downgrade\n", 3, "downgrade"),
    ("version: 1\nrules:\n  - id: a\n    tool: llm.chat\n    verdict: downgrade\n    downgrade: {model: x}\n", 6, "not a valid name"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    when: {size: {gt: 1}}\n", 6, "not a valid name"),  # not args.size (a bare `n` is now refused as a YAML 1.1 boolean first)
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    when:\n      args.n: {bigger: 1}\n", 7, "unknown key 'bigger'"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    when:\n      args.n: {}\n", 7, "at least one operator"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    when:\n      args.n: {gt: '2000'}\n", 7, "finite number"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    when:\n      args.n: {gt: true}\n", 7, "finite number"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    when:\n      args.n: {eq: .nan}\n", 7, "finite"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    when:\n      args.n: {in: 3}\n", 7, "list"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    velocity: {max: 0, per_s: 1}\n", 6, "greater than or equal to 1"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    velocity: {max: 2, per_s: 1, scope: tenant}\n", 6, "scope"),
    ("version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: allow\n    order: {after: a, not_after: b}\n", 6, "exactly one"),
    ("version: 1\nrules: []\nprices: {echo: .inf}\n", 3, "finite"),
    ("version: 1\nrules: []\nprices: {Echo: 1}\n", 3, "a-z 0-9"),
    ("version: 1\nrules: []\nllm_prices: {m: {input_per_mtok: 1}}\n", 3, "output_per_mtok"),
    ("version: 1\nrules: []\nlimits: {tenant_burst: 1.5}\n", 3, "whole number"),
    ("version: 1\nrules: []\nlimits: {tenant_per_s: 0}\n", 3, "greater than 0"),
    ("version: 1\nrules: []\nlimits: {tenant_per_s: '5'}\n", 3, "number"),
    ("version: 1\nrules: []\nlimits: {requests: 5}\n", 3, "unknown key 'requests'"),
    ("version: 1\nrules: []\negress: {allow: ['*']}\n", 3, "unknown key 'allow'"),
])
def test_bad_documents_name_the_line(text, line, fragment):
    errs = validate_policy_text(text)
    assert errs, text
    assert errs[0].startswith(f"line {line}: "), errs
    assert fragment in " ".join(errs), errs


@pytest.mark.parametrize("text, line, fragment", [
    ("version: 1\nrules: !!python/object/apply:os.system ['true']\n", 2, "not allowed"),
    ("version: 1\nrules:\n  - !!python/object:builtins.dict {id: a}\n", 3, "not allowed"),
    ("version: 1\nrules: []\nprices: {echo: !!float '1'}\n", 1, ""),  # explicit JSON tags are fine
    ("version: 1\nrules: []\nx: 2024-01-01\n", 3, "!!timestamp"),
    ("version: 1\nrules: []\nx: !!binary aGVsbG8=\n", 3, "!!binary"),
    ("version: 1\nrules: !!set {a}\n", 2, "!!set"),
    ("base: &b {tool: echo}\nversion: 1\nrules: [*b]\n", 1, "aliases"),
    ("version: 1\nrules:\n  - <<: {tool: echo}\n    id: a\n", 3, "merge keys"),
    ("version: 1\nversion: 1\nrules: []\n", 2, "duplicate key 'version'"),
    ("version: 1\nrules: []\n---\nversion: 1\n", 3, "one YAML document"),
    ("version: 1\nrules: [\n", 3, "YAML syntax error"),
    ("version: 1\n1: x\nrules: []\n", 2, "keys must be strings"),
    ("version: 1\nrules: []\nx: 'a\x00b'\n", 3, "NUL"),
    ('version: 1\nrules:\n  - {id: r, tool: echo, verdict: deny, reason: "a\\0b"}\n', 3, "NUL"),  # the escape
    ('version: 1\nrules:\n  - {id: r, tool: echo, verdict: deny, "k\\0": 1}\n', 3, "NUL"),
])
def test_yaml_tricks_are_refused_with_lines(text, line, fragment):
    errs = validate_policy_text(text)
    if not fragment:  # the control case: only the unknown-key complaint, never a tag refusal
        assert errs == []
        return
    assert errs and errs[0].startswith(f"line {line}: "), errs
    assert fragment in errs[0]


def test_python_tags_never_execute(tmp_path):
    marker = tmp_path / "pwned"
    text = f"version: 1\nrules: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(PolicyError):
        load_policy(text)
    assert not marker.exists()


def test_a_10_mb_document_is_refused_quickly():
    big = "version: 1\nrules: []\n" + "# " + "x" * (10 * 1024 * 1024) + "\n"
    t0 = time.perf_counter()
    errs = validate_policy_text(big)
    assert errs == ["line 1: policy document is larger than 524288 bytes"]
    assert time.perf_counter() - t0 < 0.5


def test_deep_nesting_and_billion_laughs_are_bounded():
    deep = "version: 1\nrules: []\nx: " + "[" * 100_000 + "]" * 100_000 + "\n"
    assert "nested deeper" in validate_policy_text(deep)[0]
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    assert "aliases" in validate_policy_text(laughs)[0]
    assert "digits" in validate_policy_text("version: 1\nrules: []\nx: " + "9" * 5000)[0]


def test_regex_rules():
    base = "version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: deny\n    content: '{}'\n"
    assert validate_policy_text(base.format("(?i)password")) == []
    for bad, fragment in [
        ("(a+)+", "nested quantifiers"),
        (r"(\w+\.)*x", "nested quantifiers"),
        ("(a*)*b", "nested quantifiers"),
        (r"(a)\1", "backreferences"),
        ("(?=a)b", "lookahead"),
        ("a{5000}", "above 1000"),
        ("[", "invalid regular expression"),
        ("x" * 513, "longer than 512"),
        (r"\Z", "RE2"),
    ]:
        errs = validate_policy_text(base.format(bad.replace("'", "''")))  # YAML single quotes: \\ is literal
        assert errs and errs[0].startswith("line 6: rules[0].content: "), (bad, errs)
        assert fragment in errs[0], (bad, errs)
    matches = "version: 1\nrules:\n  - id: a\n    tool: echo\n    verdict: deny\n    when:\n      args.q: {matches: '(x+)+y'}\n"
    assert "nested quantifiers" in validate_policy_text(matches)[0]


def test_too_many_regex_rules_are_refused():
    rules = "".join(f"  - id: r{i}\n    tool: echo\n    verdict: deny\n    content: 'x{i}'\n" for i in range(33))
    errs = validate_policy_text("version: 1\nrules:\n" + rules)
    assert errs == ["line " + str(2 + 32 * 4 + 1) + ": rules[32]: at most 32 rules may use content or matches"]


def test_limit_names_match_the_rate_limiter():
    assert LIMIT_NAMES == LIMITER_NAMES


def test_sections_are_exposed():
    p = load_policy(dedent("""\
        version: 1
        rules: []
        prices: {echo: 0, "mcp.*": 0.01, "mcp.github.*": 0.02}
        llm_prices:
          openai/gpt-4.1-mini: {input_per_mtok: 0.4, output_per_mtok: 1.6}
        limits: {tenant_per_s: 2.5, tenant_burst: 5, llm_tokens_per_min: 1000}
        egress: {}
        """))
    assert p.price_for("echo") == 0 and p.price_for("mcp.github.x") == 0.01  # first matching glob
    assert p.price_for("kb.search") is None
    assert dict(p.llm_prices["openai/gpt-4.1-mini"]) == {"input_per_mtok": 0.4, "output_per_mtok": 1.6}
    assert dict(p.limits) == {"tenant_per_s": 2.5, "tenant_burst": 5, "llm_tokens_per_min": 1000}
    assert p.layer == "tenant"


def test_default_policy():
    p = default_policy()
    assert p.layer == "default"
    assert [r.id for r in p.rules] == ["default.echo", "default.llm", "default.kb", "default.storage", "default.code"]
    assert all(r.verdict == "allow" for r in p.rules)
    assert p.price_for("storage.write") is not None and p.price_for("echo") == 0.0
    assert p.price_for("kb.delete") == p.price_for("kb.search") == 0.0001
    assert "openai/gpt-4.1-mini" in p.llm_prices
    assert default_policy() is p


def test_default_policy_prices_every_built_in_tool():
    from supervisor.settings import Settings
    from supervisor.tools.registry import default_registry

    names = default_registry(Settings()).names()
    assert {"kb.add", "kb.search", "kb.delete"} <= set(names)
    # llm.chat is priced per token (llm_prices), not per call
    assert [n for n in names if n != "llm.chat" and default_policy().price_for(n) is None] == []


def test_bundle_policy_layer():
    assert load_bundle_policy(None, source="bundle b") is None
    assert load_bundle_policy({}, source="bundle b") is None
    p = load_bundle_policy({"rules": [{"id": "x", "tool": "echo", "verdict": "deny"}]}, source="bundle b")
    assert p is not None and p.layer == "bundle" and p.rules[0].id == "x"
    with pytest.raises(PolicyError) as exc:
        load_bundle_policy({"rules": [], "prices": {"echo": 0}}, source="bundle b")
    assert exc.value.errors == ["unknown key 'prices'"]
    assert "bundle b" in exc.value.detail
    with pytest.raises(PolicyError) as exc:
        load_bundle_policy({"rules": [{"id": "x", "tool": "echo", "verdict": "allow", "delay_s": float("nan")}]},
                           source="bundle b")
    assert exc.value.errors[0].startswith("rules[0].delay_s:")
    with pytest.raises(PolicyError):
        load_bundle_policy(["rules"], source="bundle b")  # type: ignore[arg-type]


def test_cli(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("verdict: deny", "verdict: nope"))
    assert validate_file(good) == []
    assert validate_main(str(good)) == 0
    assert validate_main(str(bad)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{bad}: line 7: rules[0].verdict: Input should be 'allow', 'deny', 'require_approval', "
                   f"'delay' or 'downgrade' (got 'nope')"]
    assert validate_main(str(tmp_path / "missing.yaml")) == 2
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"version: 1\nrules: []\n# caf\xe9\n")
    assert validate_file(latin) == ["line 3: the file is not UTF-8 text"]


@pytest.mark.parametrize("written", ["1.0", "true", "1.00", "True"])
def test_a_stored_policy_an_older_version_accepted_still_loads(written):
    """Before a104fb1, `version: 1.0` / `true` were accepted and stored; a stored document still loads after an
    upgrade (its version hash unchanged), while a new document with them is still refused."""
    text = f"version: {written}\nrules:\n  - id: echo\n    tool: echo\n    verdict: allow\n"
    with pytest.raises(PolicyError):
        load_policy(text)
    p = load_policy(text, stored=True)
    assert [r.id for r in p.rules] == ["echo"]
    assert p.version != load_policy(text.replace(f"version: {written}", "version: 1")).version  # as written


@pytest.mark.parametrize("written", ["2", "2.0", "false", "0", '"1"', "1.5"])
def test_a_stored_policy_with_another_version_is_still_refused(written):
    with pytest.raises(PolicyError):
        load_policy(f"version: {written}\nrules: []\n", stored=True)


# YAML 1.1 spellings that PyYAML read as something else than they look: `in: [NO, SE]` became
# [false, "SE"] and the deny rule never fired; 12:30 was 750, 010 was 8. Refused, with a hint to quote.
@pytest.mark.parametrize("value, fragment", [
    ("NO", "boolean in YAML 1.1"), ("no", "boolean"), ("Yes", "boolean"), ("on", "boolean"), ("OFF", "boolean"),
    ("y", "boolean"), ("n", "boolean"), ("12:30", "base-60"), ("1:30:00", "base-60"), ("010", "leading zero"),
    ("1_000", "quote"), ("0b101", "quote"),
])
def test_yaml_1_1_only_spellings_are_refused_with_their_line(value, fragment):
    text = f"version: 1\nrules:\n  - id: r\n    tool: echo\n    when:\n      args.x: {{in: [SE, {value}]}}\n    verdict: deny\n"
    errs = validate_policy_text(text)
    assert errs and errs[0].startswith("line 6: "), errs
    assert fragment in errs[0] and "quote" in errs[0], errs
    # quoted, it is the string it looks like
    p = load_policy(text.replace(f", {value}]", f", '{value}']"))
    assert p.rules[0].conditions[0].operand == ("SE", value)


def test_yaml_1_2_numbers_and_booleans_are_read_as_written():
    p = load_policy(dedent("""\
        version: 1
        rules:
          - id: r
            tool: echo
            when:
              args.n: {gt: 1e3, lt: 2.5E+4}
              args.m: {in: [0o17, 0x1F, 10, TRUE, False, Null]}
            verdict: deny
        prices: {echo: 1e-3, "kb.*": 2e-3}
        """))
    assert p.prices == {"echo": 0.001, "kb.*": 0.002}
    ops = {(c.path, c.op): c.operand for c in p.rules[0].conditions}
    assert ops[(("n",), "gt")] == 1000.0 and ops[(("n",), "lt")] == 25000.0
    assert ops[(("m",), "in")] == (15, 31, 10, True, False, None)
    assert [type(v) for v in ops[(("m",), "in")]][:4] == [int, int, int, bool]


def test_explicit_tags_are_read_as_yaml_1_2_too():
    assert load_policy("version: 1\nrules: []\nprices: {echo: !!float 1e-3}\n").prices == {"echo": 0.001}
    errs = validate_policy_text("version: 1\nrules: []\nprices: {echo: !!int 010}\n")
    assert errs and errs[0].startswith("line 3: ") and "!!int" in errs[0], errs


def test_a_stored_policy_keeps_the_meaning_it_was_stored_with():
    # A document an older version stored is read as then (YAML 1.1): its tenant's calls keep working and its
    # version hash is unchanged, until an admin stores it again (which refuses the ambiguous NO).
    text = "version: 1\nrules:\n  - {id: r, tool: echo, when: {args.x: {in: [NO, SE]}}, verdict: deny}\n"
    assert validate_policy_text(text)
    p = load_policy(text, stored=True)
    assert p.rules[0].conditions[0].operand == (False, "SE")


@pytest.mark.parametrize("role, bad", [("Admin", "Admin"), ("[admn]", "admn"), ("[admin, owner]", "owner")])
def test_a_role_outside_the_closed_set_is_refused_with_its_line(role, bad):
    # before: `role: Admin` validated, and the rule then never matched any key
    text = f"version: 1\nrules:\n  - id: a\n    tool: echo\n    role: {role}\n    verdict: deny\n  - {{id: b, tool: echo, verdict: allow}}\n"
    errs = validate_policy_text(text)
    assert errs == [f"line 5: rules[0].role: unknown role {bad!r}: a role is one of admin, member, approver, viewer"]
    with pytest.raises(PolicyError):
        load_bundle_policy({"rules": [{"id": "a", "tool": "echo", "role": bad, "verdict": "deny"}]})
    # every real role is fine; a stored document (or bundle version) keeps loading as it did
    assert validate_policy_text(text.replace(f"role: {role}", "role: [admin, member, approver, viewer]")) == []
    assert bad in load_policy(text, stored=True).rules[0].roles
    assert load_bundle_policy({"rules": [{"id": "a", "tool": "echo", "role": bad, "verdict": "deny"}]}, stored=True)


@pytest.mark.parametrize("prices, fragment", [
    ("prices: {echo: 1.0e+300}", "prices.echo: a price is at most 1000000000 USD per call"),  # was: every call a traceback
    ("prices: {echo: 1000000000000}", "prices.echo: a price is at most 1000000000 USD per call"),  # was: input.invalid per call
    ("prices: {echo: 0.0000001}", "prices.echo: a positive price is at least 0.000001 USD"),  # was: a free tool
    ("llm_prices: {openai/gpt-x: {input_per_mtok: 1.0e+300, output_per_mtok: 1}}",
     "llm_prices.openai/gpt-x.input_per_mtok: an LLM price is at most 100000 USD per million tokens"),
    ("llm_prices: {openai/gpt-x: {input_per_mtok: 1, output_per_mtok: 100001}}",
     "llm_prices.openai/gpt-x.output_per_mtok: an LLM price is at most"),
])
def test_prices_out_of_the_range_calls_accept_are_refused_when_written(prices, fragment):
    # before: accepted by `policy validate` and PUT /v1/policy, then every priced call failed
    errs = validate_policy_text(f"version: 1\nrules: []\n{prices}\n")
    assert len(errs) == 1 and errs[0].startswith(f"line 3: {fragment}"), errs
    # a document stored before is still loaded (its calls fail as they did, with a clear error)
    assert load_policy(f"version: 1\nrules: []\n{prices}\n", stored=True)


def test_prices_at_the_bounds_are_accepted():
    p = load_policy("version: 1\nrules: []\nprices: {echo: 1000000000, kb.add: 0.000001, kb.search: 0.0000005, code.run: 0}\n"
                    "llm_prices: {openai/gpt-x: {input_per_mtok: 100000, output_per_mtok: 0}}\n")
    assert p.prices["echo"] == 1e9 and p.llm_prices["openai/gpt-x"]["input_per_mtok"] == 100000


def test_a_stored_policy_a_new_one_would_pass_is_read_as_it_was_checked():
    """Found by a walkthrough: a policy stored through PUT /v1/policy (checked as YAML 1.2) was enforced as
    YAML 1.1, the reading kept for documents older versions stored: ``eq: 1e3`` became the string "1e3" (the
    deny rule never fired for n=1000), ``prices: {echo: 1e-3}`` made every call of the tenant
    policy.unavailable, and audit records named a version no stored policy had."""
    text = ("version: 1\nrules:\n  - {id: no-1000, tool: echo, when: {args.n: {eq: 1e3}}, verdict: deny}\n"
            "  - {id: allow, tool: '*', verdict: allow}\nprices: {echo: 1e-3}\n")
    assert validate_policy_text(text) == []
    checked, stored = load_policy(text), load_policy(text, stored=True)
    assert stored.version == checked.version
    assert stored.rules[0].conditions[0].operand == 1000.0 == checked.rules[0].conditions[0].operand
    assert stored.prices == checked.prices
