"""The example bundles chat, researcher and coder end to end: a whole node over HTTP on both stacks,
the real openai SDK against the fake LLM server, real egress to a local page server, real sandboxes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route

from deployment.demo_broker.server import running_app
from tests.e2e.harness import SSE, collect, make_data_dir, settings_for, start_node
from tests.fakes.llm_servers import Script

TERMINAL = {"run.completed", "run.failed", "run.canceled", "run.timed_out"}
NO_LLM = dict(openai_api_key=None, openai_base_url=None, anthropic_api_key=None, anthropic_base_url=None)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def make_node(stack_kind, stores):
    """``await make_node(**settings)``: a node on this test's stack (no LLM unless given), stopped at the end."""
    nodes = []

    async def make(**extra: Any):
        node = await start_node(settings_for(stack_kind, make_data_dir(), **stores, **dict(NO_LLM, **extra)))
        nodes.append(node)
        return node

    yield make
    for n in nodes:
        await n.stop()


async def run(client, bundle: str, text: str, **extra: Any) -> list[SSE]:
    r = await client.post("/v1/runs", json={"bundle": bundle, "input": text, **extra})
    assert r.status_code == 201, r.text
    events = await collect(client, r.json()["id"])
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert sum(e.event in TERMINAL for e in events) == 1
    assert events[-1].event == "run.completed", events[-1].data
    return events


def channel(events: list[SSE], name: str) -> list[str]:
    return [e.data["text"] for e in events if e.event == "message.delta" and e.data["channel"] == name]


def customs(events: list[SSE], name: str) -> list[dict[str, Any]]:
    return [e.data["data"] for e in events if e.event == "custom" and e.data["name"] == name]


async def put_policy(client, text: str) -> None:
    r = await client.put("/v1/policy", content=text.encode())
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------------------------- chat


async def test_chat_streams_the_answer_and_sends_history(make_node, llm):
    node = await make_node(openai_base_url=llm.openai_base_url)
    _, key = await node.tenant()
    c = node.client(key)
    llm.enqueue(Script(text="Paris is the capital of France.", thinking="The user asks about geography."))
    first = await run(c, "chat", "What is the capital of France?", conversation_id="conv-chat")
    answer = channel(first, "answer")
    assert len(answer) > 1, "the answer streams in several deltas"
    assert "".join(answer) == "Paris is the capital of France.", "streamed once, never re-emitted by the bundle"
    assert "".join(channel(first, "thinking")) == "The user asks about geography."

    llm.enqueue(Script(text="Berlin."))
    second = await run(c, "chat", "And of Germany?", conversation_id="conv-chat")
    assert "".join(channel(second, "answer")) == "Berlin."
    sent = [(m["role"], m["content"]) for m in llm.requests[-1].body["messages"] if m["role"] != "system"]
    assert sent == [
        ("user", "What is the capital of France?"),
        ("assistant", "Paris is the capital of France."),
        ("user", "And of Germany?"),
    ]
    assert llm.requests[-1].body["model"] == "gpt-4.1-mini" and llm.requests[-1].body["stream"] is True


async def test_chat_without_a_provider_answers_how_to_configure_one(make_node):
    node = await make_node()
    _, key = await node.tenant()
    c = node.client(key)
    events = await run(c, "chat", "hello?")
    text = "".join(channel(events, "answer"))
    for needle in ("STOCKADE_OPENAI_API_KEY", "STOCKADE_OPENAI_BASE_URL", "STOCKADE_ANTHROPIC_API_KEY", "Ollama"):
        assert needle in text
    assert text.count(". ") == 0 and text.endswith("."), "one sentence"
    results = [e.data for e in events if e.event == "tool.result"]
    assert results and all(r["code"] == "llm.unconfigured" for r in results)


async def failed_chat(c: Any, text: str) -> tuple[list[SSE], list[dict[str, Any]]]:
    """A chat run that ends failed: its events, and the audit records of its llm.chat calls."""
    r = await c.post("/v1/runs", json={"bundle": "chat", "input": text})
    assert r.status_code == 201, r.text
    events = await collect(c, r.json()["id"])
    assert sum(e.event in TERMINAL for e in events) == 1
    assert events[-1].event == "run.failed", events[-1]
    audit = (await c.get("/v1/audit", params={"run_id": r.json()["id"]})).json()["data"]
    return events, [a for a in audit if a["tool"] == "llm.chat" and a["kind"] != "tool.allowed"]


async def test_chat_answer_cut_short_fails_the_run_and_charges_what_arrived(make_node, llm):
    # the provider's 200 stream ends cleanly after two words, without its finish_reason / [DONE]: the run used to
    # complete with "Paris is" as the whole answer
    node = await make_node(openai_base_url=llm.openai_base_url)
    _, key = await node.tenant()
    c = node.client(key)
    llm.enqueue(Script(text="Paris is the capital of France.", end_after_deltas=2))
    events, calls = await failed_chat(c, "What is the capital of France?")
    assert "".join(channel(events, "answer")) == "Paris is "
    assert [e.data["code"] for e in events if e.event == "tool.result"] == ["llm.provider_error"]
    assert [(a["kind"], a["code"]) for a in calls] == [("tool.failed", "llm.provider_error")]
    assert calls[0]["cost_usd"] > 0  # what was generated is owed
    assert len(llm.requests) == 1  # not retried: the answer would repeat


async def test_chat_json_error_in_a_200_fails_the_run_with_the_providers_message(make_node, llm):
    node = await make_node(openai_base_url=llm.openai_base_url)
    _, key = await node.tenant()
    c = node.client(key)
    said = {"error": {"message": "model not found", "type": "invalid_request_error"}}
    llm.enqueue(Script(body=json.dumps(said).encode()))
    events, calls = await failed_chat(c, "hello?")
    assert channel(events, "answer") == []
    results = [e.data for e in events if e.event == "tool.result"]
    assert [r["code"] for r in results] == ["llm.provider_error"]
    assert "model not found (invalid_request_error)" in json.dumps(events[-1].data), events[-1].data
    assert [(a["code"], a["cost_usd"]) for a in calls] == [("llm.provider_error", 0)]  # nothing was generated
    assert len(llm.requests) == 1


# ---------------------------------------------------------------------------------------- researcher

PAGES = {
    "/sandbox": ("<html><head><title>Sandboxes</title><style>p{}</style></head><body>"
                 "<p>Stockade runs every bundle in a bubblewrap sandbox without network access.</p>"
                 "<p>The only door out of the sandbox is a Unix socket to the supervisor.</p>"
                 "<script>steal()</script></body></html>"),
    "/budgets": "Budgets: every tool call reserves its worst-case cost before the sandbox may use it.",
}


@contextlib.asynccontextmanager
async def page_server() -> AsyncIterator[str]:
    async def page(request):
        body = PAGES.get(request.url.path)
        if body is None:
            return PlainTextResponse("not here", status_code=404)
        return HTMLResponse(body) if body.startswith("<html") else PlainTextResponse(body)

    async with running_app(Starlette(routes=[Route("/{p:path}", page)])) as url:
        yield url


def research_policy(pages: str) -> str:
    return f"""version: 1
rules:
  - id: pages
    tool: http.request
    resource: "{pages}/**"
    when: {{args.method: {{eq: GET}}}}
    verdict: allow
  - id: kb
    tool: kb.*
    verdict: allow
  - id: llm
    tool: llm.chat
    verdict: allow
"""


async def test_researcher_cites_its_sources_and_suggests_followups(make_node, llm):
    node = await make_node(openai_base_url=llm.openai_base_url, egress_allow_private=["127.0.0.0/8"])
    _, key = await node.tenant()
    c = node.client(key)
    async with page_server() as pages, page_server() as elsewhere:
        await put_policy(c, research_policy(pages))
        llm.enqueue(
            Script(text="Bundles run in a bubblewrap sandbox [1]."),
            Script(text="1. What is bubblewrap?\n2. How do budgets work?\n3. Which tools exist?\n"),
        )
        question = (f"How does Stockade sandbox a bundle? {pages}/sandbox {pages}/budgets {pages}/missing "
                    f"{elsewhere}/sandbox")
        events = await run(c, "researcher", question)

    assert "".join(channel(events, "answer")).endswith("Bundles run in a bubblewrap sandbox [1].")
    prompt = llm.requests[0].body["messages"][-1]["content"]
    assert "without network access" in prompt and "steal()" not in prompt
    cites = [e.data for e in events if e.event == "citation"]
    assert cites, "at least one citation"
    assert all(x["source"] in (f"{pages}/sandbox", f"{pages}/budgets") for x in cites)
    assert any(x["doc_id"].startswith(f"{pages}/sandbox#") and x["title"] == "Sandboxes" for x in cites)
    follow = [e.data["items"] for e in events if e.event == "followups"]
    assert follow == [["What is bubblewrap?", "How do budgets work?", "Which tools exist?"]]
    assert events[-2].event == "followups", "the run ends with its follow-up questions"
    skipped = {s["url"]: s["reason"] for s in customs(events, "source.skipped")}
    assert skipped == {f"{pages}/missing": "answered HTTP 404", f"{elsewhere}/sandbox": "not allowed by the policy"}
    denied = [e.data for e in events if e.event == "tool.result" and e.data.get("code") == "policy.denied"]
    assert len(denied) == 1


async def test_researcher_without_llm_answers_from_the_snippets(make_node):
    node = await make_node(egress_allow_private=["127.0.0.0/8"])
    _, key = await node.tenant()
    c = node.client(key)
    async with page_server() as pages:
        await put_policy(c, research_policy(pages))
        events = await run(c, "researcher", f"What do budgets reserve? {pages}/budgets")
        again = await run(c, "researcher", "Which cost do budgets reserve?")  # no URL: the KB remembers
    for evs in (events, again):
        text = "".join(channel(evs, "answer"))
        assert text.startswith("Here is what the sources say:") and "worst" in text and "[1]" in text
        cites = [e.data for e in evs if e.event == "citation"]
        assert [x["doc_id"] for x in cites] == [f"{pages}/budgets#0"]
        items = next(e.data["items"] for e in evs if e.event == "followups")
        assert 2 <= len(items) <= 3 and all(i.endswith("?") for i in items)


# --------------------------------------------------------------------------------------------- coder


async def test_coder_runs_the_models_code_and_shows_the_output(make_node, llm):
    node = await make_node(openai_base_url=llm.openai_base_url)
    _, key = await node.tenant()
    c = node.client(key)
    llm.enqueue(Script(text="Here you go:\n```python\nprint(sum(range(10)) * 2)\n```\n"))
    events = await run(c, "coder", "double the sum of 0..9")
    text = "".join(channel(events, "answer"))
    assert "```python\nprint(sum(range(10)) * 2)\n```" in text, "the model's reply streamed"
    assert "**Output:**\n```\n90\n```" in text
    assert customs(events, "code.result") == [
        {"attempt": 1, "exit_code": 0, "stdout": "90\n", "stderr": "", "files": []}
    ]
    assert len(llm.requests) == 1


async def test_coder_asks_for_one_fix_when_the_code_fails(make_node, llm):
    node = await make_node(openai_base_url=llm.openai_base_url)
    _, key = await node.tenant()
    c = node.client(key)
    llm.enqueue(
        Script(text="```python\nprint(10 / 0)\n```"),
        Script(text="```python\nprint(10 // 1)\n```"),
    )
    events = await run(c, "coder", "divide ten")
    results = customs(events, "code.result")
    assert [r["exit_code"] for r in results] == [1, 0]
    assert "ZeroDivisionError" in results[0]["stderr"] and results[1]["stdout"] == "10\n"
    fix_request = llm.requests[1].body["messages"]
    assert "ZeroDivisionError" in fix_request[-1]["content"]
    assert [m["role"] for m in fix_request if m["role"] != "system"] == ["user", "assistant", "user"]


async def test_coder_without_llm_runs_pasted_code_or_explains(make_node):
    node = await make_node()
    _, key = await node.tenant()
    c = node.client(key)
    events = await run(c, "coder", "```python\nimport math\nprint(math.factorial(5))\n```")
    assert "**Output:**\n```\n120\n```" in "".join(channel(events, "answer"))
    assert [e.data["tool"] for e in events if e.event == "tool.result"] == ["code.run"]
    words = await run(c, "coder", "list the first ten primes")
    text = "".join(channel(words, "answer"))
    assert "STOCKADE_OPENAI_API_KEY" in text and "STOCKADE_ANTHROPIC_API_KEY" in text
    assert not customs(words, "code.result")
