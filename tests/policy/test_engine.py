"""The engine against adversarial tables: names, resources, types, paths, order of rules."""

from __future__ import annotations

import math
from textwrap import dedent
from typing import Any

import pytest

from supervisor.errors import StockadeError
from supervisor.policy import NO_MATCH, PolicyRequest, evaluate, is_valid_tool_name, load_policy


def req(tool: str = "echo", args: dict[str, Any] | None = None, *, resource: str | None = None,
        role: str = "member", user: str | None = None, project: str | None = None,
        history: tuple[tuple[str, float], ...] = (), **kw: Any) -> PolicyRequest:
    return PolicyRequest(tool=tool, args=args or {}, resource=resource, role=role, user=user, project=project,
                         history=history, **kw)


def policy(body: str):
    return load_policy("version: 1\nrules:\n" + dedent(body))


# --- tool names -----------------------------------------------------------------------------------

ECHO_ONLY = policy("""\
    - id: echo
      tool: echo
      verdict: allow
    - id: everything-else
      tool: "*"
      verdict: allow
    """)


@pytest.mark.parametrize("name", [
    "Echo", "ECHO", "ｅcho", "e\u200dcho", "e\u200bcho", "\u200becho", "echo\x00", "echo ", " echo", "echo\n",
    "ech\u043e",  # Cyrillic o
    "échο", "", "e" * 129, "echo/..", "echo*", "ec?o",
])
def test_tool_name_look_alikes_never_match(name):
    assert not is_valid_tool_name(name)
    v = evaluate(ECHO_ONLY, req(name))
    assert (v.verdict, v.rule_id) == ("deny", None)  # not even the catch-all "*" rule
    assert v.reason == "invalid tool name"


@pytest.mark.parametrize("name", ["echo", "kb.search", "mcp.github.create_issue", "a-b_c.d", "x" * 128])
def test_valid_tool_names(name):
    assert is_valid_tool_name(name)
    assert evaluate(ECHO_ONLY, req(name)).verdict == "allow"


MCP = policy("""\
    - id: no-greet
      tool: mcp.fake.greet
      verdict: deny
    - id: door-rule
      tool: mcp.call
      when: {args.x: {eq: 1}}
      verdict: require_approval
    - id: mcp
      tool: "mcp.*"
      verdict: allow
    """)


@pytest.mark.parametrize("called_as", [None, "mcp.call"])
def test_a_rule_on_any_name_of_a_call_matches_it(called_as):
    # mcp.call and mcp.<server>.<tool> are one call with both names (the chain resolves the door)
    one = {"aliases": ("mcp.call",), "called_as": called_as}
    assert evaluate(MCP, req("mcp.fake.greet", **one)).rule_id == "no-greet"
    assert evaluate(MCP, req("mcp.fake.add", {"x": 1}, **one)).rule_id == "door-rule"
    assert evaluate(MCP, req("mcp.fake.add", {"x": 2}, **one)).rule_id == "mcp"


def test_names_of_a_resolved_call_are_checked():
    ok = evaluate(MCP, req("mcp.fake.getUser", called_as="mcp.call", aliases=("mcp.call",)))
    assert (ok.verdict, ok.rule_id) == ("allow", "mcp")  # the server's own name keeps its case
    for bad in (req("mcp.fake.getUser"),  # only a resolved call may carry upper case
                req("mcp.fake.getUser", called_as="Mcp.call"), req("mcp.fake.get\u200dUser", called_as="mcp.call"),
                req("mcp.fake.add", aliases=("Mcp.call",)), req("mcp.fake.add", aliases=["mcp.call"])):
        v = evaluate(MCP, bad)
        assert (v.verdict, v.rule_id, v.reason) == ("deny", None, "invalid tool name"), bad


@pytest.mark.parametrize("pattern, tool, hit", [
    ("kb.*", "kb.search", True), ("kb.*", "kb.", True), ("kb.*", "kb", False), ("kb.*", "kbx.search", False),
    ("mcp.github.*", "mcp.github.create_issue", True), ("mcp.github.*", "mcp.gitlab.x", False),
    ("mcp.*.create", "mcp.github.create", True), ("mcp.*.create", "mcp.github.created", False),
    ("*.search", "kb.search", True), ("echo", "echo2", False), ("echo", "echo", True),
])
def test_tool_globs(pattern, tool, hit):
    p = policy(f"- id: r\n  tool: '{pattern}'\n  verdict: allow\n")
    assert (evaluate(p, req(tool)).rule_id == "r") is hit


@pytest.mark.parametrize("pattern, tool, hit", [
    # an MCP tool's own name keeps its case (was: refused at PUT, and the lower-case spelling matched nothing)
    ("mcp.fake.getUser", "mcp.fake.getUser", True), ("mcp.fake.getUser", "mcp.fake.getuser", False),
    ("mcp.*.get*", "mcp.fake.getUser", True), ("mcp.fake.getuser", "mcp.fake.getUser", False),
    ("mcp.fake.*", "mcp.fake.getUser", True),
])
def test_a_rule_names_an_mcp_tool_with_upper_case_as_it_is_called(pattern, tool, hit):
    p = policy(f"- id: r\n  tool: '{pattern}'\n  verdict: deny\n- id: any\n  tool: 'mcp.*'\n  verdict: allow\n")
    v = evaluate(p, req(tool, called_as="mcp.call"))
    assert v.rule_id == ("r" if hit else "any"), v


# --- resources -------------------------------------------------------------------------------------

WS = policy("""\
    - id: ws
      tool: storage.*
      resource: "/ws/**"
      verdict: allow
    - id: ws-top
      tool: storage.*
      resource: "/top/*"
      verdict: allow
    - id: api
      tool: http.request
      resource: "https://api.example.com/v1/**"
      verdict: allow
    """)


@pytest.mark.parametrize("tool, resource, rule", [
    ("storage.read", "/ws/a", "ws"),
    ("storage.read", "/ws/a/b/c.txt", "ws"),
    ("storage.read", "/ws/", "ws"),
    ("storage.read", "/ws", None),
    ("storage.read", "/wsx", None),
    ("storage.read", "/ws-evil/a", None),
    ("storage.read", "/secret", None),
    ("storage.read", "/ws/../secret", "ws"),  # globs give ".." no meaning; resolved resources never contain it
    ("storage.read", "/WS/a", None),
    ("storage.read", None, None),  # a tool without a resource never matches a resource rule
    ("storage.read", "/top/a", "ws-top"),
    ("storage.read", "/top/a/b", None),  # * does not cross /
    ("storage.read", "/top/", "ws-top"),
    ("http.request", "https://api.example.com/v1/x?q=1", "api"),
    ("http.request", "https://api.example.com/v1", None),
    ("http.request", "https://api.example.com/v2/x", None),
    ("http.request", "https://api.example.com.evil.net/v1/x", None),
    ("http.request", "https://evil.net/https://api.example.com/v1/x", None),
    ("http.request", "http://api.example.com/v1/x", None),
])
def test_resource_globs_match_only_the_resolved_string(tool, resource, rule):
    v = evaluate(WS, req(tool, resource=resource))
    assert v.rule_id == rule
    assert v.verdict == ("allow" if rule else "deny")


def test_resource_glob_is_literal_apart_from_stars():
    p = policy("- id: q\n  tool: http.request\n  resource: 'https://a.example/s?q=[x].*'\n  verdict: allow\n")
    assert evaluate(p, req("http.request", resource="https://a.example/s?q=[x].anything")).rule_id == "q"
    assert evaluate(p, req("http.request", resource="https://a.example/sXq=[x].y")).rule_id is None
    assert evaluate(p, req("http.request", resource="https://a.example/s?q=x.y")).rule_id is None



@pytest.mark.parametrize("pattern", ["storage://u/usr_1/cafe\u0301/**", "storage://u/usr_1/caf\u00e9/**"])
def test_resource_pattern_is_nfc_like_the_resource(pattern):
    # a deny written in NFD (as some editors save it) must still deny the NFC resource the resolver hands over;
    # 25 filler rules switch on the prefix index, which files rules under the head of the (NFC) pattern
    filler = "".join(f"- id: f{i}\n  tool: storage.read\n  resource: 'storage://u/usr_9/{i}/**'\n  verdict: allow\n"
                     for i in range(25))
    p = policy(f"- id: no-cafe\n  tool: storage.*\n  resource: '{pattern}'\n  verdict: deny\n{filler}"
               "- id: rest\n  tool: storage.*\n  resource: 'storage://u/usr_1/**'\n  verdict: allow\n")
    assert evaluate(p, req("storage.read", resource="storage://u/usr_1/caf\u00e9/x")).rule_id == "no-cafe"
    assert evaluate(p, req("storage.read", resource="storage://u/usr_1/cafe/x")).rule_id == "rest"

# --- conditions and type confusion -----------------------------------------------------------------

def cond(spec: str) -> Any:
    return policy(f"- id: c\n  tool: echo\n  when:\n    args.v: {spec}\n  verdict: deny\n")


NAN, INF = float("nan"), float("1e309")
TYPE_TABLE = [
    # (condition, value, holds)
    ("{gt: 1000}", 2000, True), ("{gt: 1000}", 2000.5, True), ("{gt: 1000}", 1000, False),
    ("{gt: 1000}", "2000", False), ("{gt: 1000}", None, False), ("{gt: 1000}", True, False),
    ("{gt: 0}", True, False), ("{gt: 1000}", [2000], False), ("{gt: 1000}", {"v": 2000}, False),
    ("{gt: 1000}", NAN, False), ("{gt: 1000}", INF, False), ("{lt: 1000}", -INF, False),
    ("{lt: 1000}", NAN, False), ("{lt: 0}", -1, True), ("{lte: -1}", -1, True), ("{gte: 0}", -1, False),
    ("{gt: 1000}", 10**400, True),
    ("{eq: 1}", True, False), ("{eq: true}", 1, False), ("{eq: 0}", False, False), ("{eq: 1}", 1.0, True),
    ("{eq: '1'}", 1, False), ("{eq: null}", None, True), ("{eq: null}", 0, False), ("{eq: null}", "", False),
    ("{eq: [1, 2]}", [1, 2], True), ("{eq: [1, 2]}", [1, True], False), ("{eq: [1, 2]}", [1, 2, 3], False),
    ("{eq: {a: 1}}", {"a": 1}, True), ("{eq: {a: 1}}", {"a": True}, False), ("{eq: {a: 1}}", {"a": 1, "b": 2}, False),
    ("{eq: 5}", NAN, False), ("{ne: 5}", NAN, False), ("{ne: 5}", INF, False), ("{ne: 5}", "5", False),
    ("{ne: 5}", None, False), ("{ne: 5}", 6, True), ("{ne: 5}", 5, False), ("{ne: [1]}", [NAN], False),
    ("{ne: prod}", "dev", True), ("{ne: prod}", ["prod"], False),
    ("{in: [a, b]}", "a", True), ("{in: [a, b]}", "c", False), ("{in: [1, 2]}", True, False),
    ("{in: [1, 2]}", "1", False), ("{in: [null]}", None, True), ("{in: [1]}", NAN, False),
    ("{not_in: [a, b]}", "c", True), ("{not_in: [a, b]}", "a", False), ("{not_in: [a, b]}", 5, False),
    ("{not_in: [1, 2]}", True, False), ("{not_in: [1, 2]}", NAN, False), ("{not_in: [1, 2]}", INF, False),
    ("{not_in: [1, 2]}", 3, True), ("{not_in: [a]}", None, False), ("{not_in: [a]}", ["b"], False),
    ("{contains: secret}", "a secret here", True), ("{contains: secret}", "SECRET", False),
    ("{contains: secret}", ["secret"], True), ("{contains: secret}", ["a secret"], False),
    ("{contains: 1}", [True], False), ("{contains: 1}", [1.0, 2], True), ("{contains: x}", {"x": 1}, False),
    ("{contains: x}", None, False), ("{contains: 1}", "1", False),
    ("{matches: '^[a-z]+$'}", "abc", True), ("{matches: '^[a-z]+$'}", "abc1", False),
    ("{matches: '^1$'}", 1, False), ("{matches: 'x'}", ["x"], False), ("{matches: 'a.c'}", "a\ud800c", True),
    ("{gt: 1, lt: 10}", 5, True), ("{gt: 1, lt: 10}", 10, False),
]


@pytest.mark.parametrize("spec, value, holds", TYPE_TABLE)
def test_strict_types(spec, value, holds):
    v = evaluate(cond(spec), req(args={"v": value}))
    assert v.rule_id == ("c" if holds else None), (spec, value)


@pytest.mark.parametrize("args", [
    {}, {"w": 5000}, {"v": {}}, {"V": 5000}, {"v ": 5000},
])
def test_missing_path_never_matches_not_even_ne(args):
    for spec in ("{gt: 1}", "{ne: 1}", "{not_in: [1]}", "{eq: null}", "{ne: null}"):
        assert evaluate(cond(spec), req(args=args)).rule_id is None, (spec, args)


def test_nested_paths_and_list_indexes():
    p = policy("""\
        - id: deep
          tool: llm.chat
          when:
            args.messages.0.role: {eq: system}
            args.options.temperature: {gt: 1}
          verdict: deny
        """)
    hit = {"messages": [{"role": "system"}], "options": {"temperature": 1.5}}
    assert evaluate(p, req("llm.chat", hit)).rule_id == "deep"
    for args in [
        {"messages": [{"role": "user"}], "options": {"temperature": 1.5}},
        {"messages": [], "options": {"temperature": 1.5}},
        {"messages": {"0": {"role": "system"}}, "options": {"temperature": 1.5}},  # a dict key "0" is a key
        {"messages": "system", "options": {"temperature": 1.5}},
        {"messages": [{"role": "system"}], "options": {"temperature": "2"}},
        {"messages": [{"role": "system"}], "options": 2},
    ]:
        v = evaluate(p, req("llm.chat", args))
        assert v.rule_id in (None, "deep")
        assert (v.rule_id == "deep") is (args["messages"] == {"0": {"role": "system"}}), args


# --- order of rules, no match -----------------------------------------------------------------------

def test_first_match_wins_and_no_match_denies():
    p = policy("""\
        - id: no-huge
          tool: echo
          when: {args.n: {gt: 100}}
          verdict: deny
          reason: too big
        - id: big
          tool: echo
          when: {args.n: {gt: 10}}
          verdict: require_approval
        - id: echo
          tool: echo
          verdict: allow
        - id: never-reached
          tool: echo
          verdict: deny
        """)
    assert (evaluate(p, req(args={"n": 101})).verdict, evaluate(p, req(args={"n": 101})).reason) == ("deny", "too big")
    assert evaluate(p, req(args={"n": 11})).rule_id == "big"
    assert evaluate(p, req(args={"n": 11})).verdict == "require_approval"
    assert evaluate(p, req(args={"n": 1})).rule_id == "echo"
    v = evaluate(p, req("kb.search"))
    assert (v.verdict, v.rule_id, v.reason, v.layer) == ("deny", None, NO_MATCH, "tenant")
    empty = load_policy("version: 1\nrules: []\n")
    assert evaluate(empty, req()).verdict == "deny"


def test_principal_matchers():
    p = policy("""\
        - id: admins
          tool: echo
          role: admin
          verdict: allow
        - id: alice-in-p1
          tool: echo
          user: [alice, bob]
          project: p1
          verdict: allow
        """)
    assert evaluate(p, req(role="admin")).rule_id == "admins"
    assert evaluate(p, req(role="Admin")).rule_id is None
    assert evaluate(p, req(user="alice", project="p1")).rule_id == "alice-in-p1"
    assert evaluate(p, req(user="bob", project="p1")).rule_id == "alice-in-p1"
    assert evaluate(p, req(user="alice", project="p2")).rule_id is None
    assert evaluate(p, req(user="alice", project=None)).rule_id is None
    assert evaluate(p, req(user=None, project="p1")).rule_id is None


def test_verdict_payloads():
    p = policy("""\
        - id: slow
          tool: echo
          verdict: delay
          delay_s: 2.5
          reason: cool down
        - id: cheap
          tool: llm.chat
          verdict: downgrade
          downgrade: {args.model: openai/gpt-4.1-mini, args.max_tokens: 256}
        """)
    v = evaluate(p, req())
    assert (v.verdict, v.delay_s, v.reason, v.replacements) == ("delay", 2.5, "cool down", {})
    v = evaluate(p, req("llm.chat"))
    assert v.verdict == "downgrade" and v.replacements == {"model": "openai/gpt-4.1-mini", "max_tokens": 256}
    assert math.isclose(v.delay_s, 0)


def test_surrogates_in_resources_cannot_dodge_a_deny_glob():
    # os.fsdecode turns undecodable bytes of a file name into lone surrogates
    p = policy("""\
        - id: no-secret
          tool: storage.read
          resource: "/ws/*/secret"
          verdict: deny
        - id: ws
          tool: storage.read
          resource: "/ws/**"
          verdict: allow
        """)
    assert evaluate(p, req("storage.read", resource="/ws/\udcff/secret")).rule_id == "no-secret"
    assert evaluate(p, req("storage.read", resource="/ws/\udcff/other")).rule_id == "ws"


@pytest.mark.parametrize("pattern", ["Echo", "HTTP.request", "mcp.Fake.getUser", "MCP.fake.getUser", "kb.Search"])
def test_a_tool_pattern_with_upper_case_outside_an_mcp_tool_name_is_refused(pattern):
    with pytest.raises(StockadeError) as exc:
        policy(f"- id: r\n  tool: '{pattern}'\n  verdict: deny\n")
    assert exc.value.code == "policy.invalid"
    assert "upper case" in exc.value.errors[0] or "may contain only" in exc.value.errors[0], exc.value.errors
