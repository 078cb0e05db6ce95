"""llm.chat, found by an outside-in walkthrough (session 19).

- What the tool streams to the run's answer ignored the run's limits: a bundle with
  ``max_output_bytes: 2048`` had three streamed answers stored (50,667 bytes, 9,011 events) where a
  3,000-byte ``ctx.answer`` fails at once with ``limit.output``. The deltas went through ``ctx.emit``
  straight to the run's emitter; only the sandbox's own emits were metered. Now the run session's
  ``ctx.emit`` meters them with the same count and bucket: past the output limit the run ends
  ``limit.output``, the stream is closed and what was generated is charged; past the event rate a
  delta waits for its token (the bundle's own emits keep their share) instead of ending the run.
- The result's ``cost_usd`` was the uncapped price (40.000008 for a provider claiming 100M input
  tokens) while the events, receipt and ledger said what settlement charged (0.001644, the
  reservation). It now says what is charged; the uncapped price is ``cost_uncapped_usd``.
- ``clean_text`` turned a lone surrogate into three U+FFFD and lost a pair split between two deltas.
- A failure after output had started said "not retried so the answer is not repeated" and
  ``retryable: true``.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.chain.base import CallState
from supervisor.errors import StockadeError
from supervisor.session import BUNDLE_EVENT_TYPES, RunSession
from supervisor.settings import Settings
from supervisor.tool_output import ToolOutput
from supervisor.tools.llm import LlmChatArgs, LlmChatTool
from supervisor.tools.llm._collector import clean_text
from supervisor.wire import encode
from tests.e2e.harness import collect, make_data_dir, settings_for, start_node
from tests.e2e.test_run_pipeline import check_stream
from tests.fakes.llm_servers import FakeLLMServer, Script
from tests.fakes.tool_ctx import make_tool_ctx

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning"),
]

MODELS = ["openai/gpt-4.1-mini", "openai/gpt-4.1-mini@responses", "anthropic/claude-sonnet-4-5"]


def make_tool(srv: FakeLLMServer, **kw: Any) -> LlmChatTool:
    settings = Settings(openai_api_key="sk-test", openai_base_url=srv.openai_base_url,  # type: ignore[arg-type]
                        anthropic_api_key="sk-ant-test", anthropic_base_url=srv.anthropic_base_url,
                        llm_timeout_s=10.0, llm_max_retries=2)
    return LlmChatTool(settings, backoff_base_s=0.001, backoff_cap_s=0.01, **kw)


def args_for(model: str, **kw: Any) -> LlmChatArgs:
    api = "chat"
    if model.endswith("@responses"):
        model, api = model.removesuffix("@responses"), "responses"
    raw: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "api": api}
    raw.update(kw)
    return LlmChatArgs.model_validate(raw)


# --- finding 4: surrogates ------------------------------------------------------------------------


def test_a_lone_surrogate_becomes_one_replacement_character_and_a_pair_its_character() -> None:
    assert clean_text("A\ud83dB") == "A\ufffdB"  # was three
    assert clean_text("A\ude00B") == "A\ufffdB"
    assert clean_text("end \ud83d") == "end \ufffd"
    assert clean_text("A\ud83d\ude00B") == "A\U0001F600B"  # two code points of one character: was six U+FFFD
    assert clean_text("\ude00\ud83d") == "\ufffd\ufffd"  # in the wrong order: two lone ones
    assert clean_text("plain ascii and \u00e9") == "plain ascii and \u00e9"


@pytest.mark.parametrize("model", MODELS)
async def test_a_surrogate_pair_split_between_two_deltas_is_joined_back(srv: FakeLLMServer, model: str) -> None:
    """A provider may cut an emoji between two events, each escaping its half (``"A\\ud83d"``, ``"\\ude00B"``):
    each half alone is a lone surrogate. The first half waits for the next delta of its channel; one that
    never gets its second half (the answer ended) is one U+FFFD."""
    srv.script = Script(deltas=("A\ud83d", "\ude00B ", "lone \ud83d", " mid ", "end \ud83d"), input_tokens=5)
    tool = make_tool(srv)
    ctx, rec = make_tool_ctx(tool.settings)
    res = await tool.run(args_for(model), ctx)
    want = "A\U0001F600B lone \ufffd mid end \ufffd"
    assert res.result["text"] == want
    assert "".join(rec.deltas("answer")) == want  # the run's stream
    assert "".join(c["text"] for c in rec.chunks) == want  # the bundle's
    for text in rec.deltas():
        text.encode("utf-8")  # every delta can be stored and framed
    await tool.aclose()


async def test_a_lone_surrogate_ending_an_unstreamed_answer_is_one_replacement_character(srv: FakeLLMServer) -> None:
    srv.script = Script(text="x\ud83d", input_tokens=5)
    tool = make_tool(srv)
    ctx, rec = make_tool_ctx(tool.settings)
    res = await tool.run(args_for("openai/gpt-4.1-mini", stream=False), ctx)
    assert res.result["text"] == "x\ufffd" and rec.events == []
    await tool.aclose()


# --- finding 5: retryable after output --------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("failure", ["dropped", "error event", "ended early", "past max_tokens", "deadline"])
async def test_a_failure_after_output_was_streamed_is_not_retryable(srv: FakeLLMServer, model: str,
                                                                     failure: str) -> None:
    long = " ".join(f"w{i}" for i in range(3000))
    script, kw, tool_kw = {
        "dropped": (Script(text="one two three four", abort_after_deltas=2), {}, {}),
        "error event": (Script(text="one two three four", error_after_deltas=2), {}, {}),
        "ended early": (Script(text="one two three four", end_after_deltas=2), {}, {}),
        "past max_tokens": (Script(text=long), {"max_tokens": 1}, {}),
        "deadline": (Script(text="one two three four", hold_after_deltas=2), {}, {"timeout_s": 1.0}),
    }[failure]
    srv.script = script
    tool = make_tool(srv, **tool_kw)
    ctx, rec = make_tool_ctx(tool.settings)
    with pytest.raises(StockadeError) as ei:
        await tool.run(args_for(model, **kw), ctx)
    err = ei.value
    assert rec.deltas("answer")  # output had gone out
    assert "not retried" in err.detail
    assert err.to_dict()["retryable"] is False, (err.code, err.to_dict())  # what the bundle's ToolError says
    assert len(srv.requests) == 1
    await tool.aclose()


# --- finding 3: the result's cost is what is charged ------------------------------------------------


async def test_the_result_says_what_is_charged_and_the_uncapped_price_apart(srv: FakeLLMServer) -> None:
    srv.script = Script(text="hi", input_tokens=100_000_000, output_tokens=2)
    tool = make_tool(srv)
    ctx, _ = make_tool_ctx(tool.settings)
    a = args_for("openai/gpt-4.1-mini")
    reserved = tool.estimate_micro(a, ctx)  # the most settlement charges
    assert reserved is not None
    res = await tool.run(a, ctx)
    price = tool.pricing.price_for("openai/gpt-4.1-mini")
    uncapped = price.cost_micro(100_000_000, 2)
    assert uncapped > reserved
    assert res.result["cost_usd"] == reserved / 1_000_000
    assert res.result["cost_uncapped_usd"] == uncapped / 1_000_000
    assert res.cost_micro == uncapped  # settlement caps it, and records the overage in the ledger
    # an ordinary answer: its price is what is charged, nothing said apart
    srv.script = Script(text="hi", input_tokens=10, output_tokens=2)
    res = await tool.run(a, ctx)
    assert res.result["cost_usd"] == price.cost_micro(10, 2) / 1_000_000 and "cost_uncapped_usd" not in res.result
    await tool.aclose()


# --- finding 2: the run session meters what a tool streams ------------------------------------------


class _Emitter:
    def __init__(self) -> None:
        self.bytes_emitted = 0
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.emitted = asyncio.Event()  # set at each emit (a barrier for what a timer sends)

    async def emit(self, type: str, data: dict[str, Any]) -> None:
        self.events.append((type, dict(data)))
        self.emitted.set()

    def emit_nowait(self, type: str, data: dict[str, Any]) -> asyncio.Future:
        self.events.append((type, dict(data)))
        stored = asyncio.get_running_loop().create_future()
        stored.set_result(None)
        return stored

    def deltas(self) -> list[str]:
        return [d["text"] for t, d in self.events if t == "message.delta"]


class _Recorder:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    async def record(self, tenant_id: str, kind: str, **kw: Any) -> None:
        self.kinds.append(kind)


def _session(chain: Any, *, max_output: int = 1 << 20, events_per_s: int = 1000) -> tuple[RunSession, _Emitter,
                                                                                             _Recorder, list[str]]:
    settings = SimpleNamespace(sandbox_max_frame_bytes=1 << 20, sandbox_max_output_bytes=1 << 20,
                               sandbox_max_events_per_s=1000)
    emitter, recorder, limits = _Emitter(), _Recorder(), []
    sess = RunSession(services=SimpleNamespace(settings=settings), chain=chain, recorder=recorder,  # type: ignore[arg-type]
                      binding=SimpleNamespace(run_id="run_x", tenant_id="ten_x"), emitter=emitter,  # type: ignore[arg-type]
                      welcome={}, on_limit=limits.append, max_output=max_output, events_per_s=events_per_s)
    return sess, emitter, recorder, limits


def _streaming_tool(deltas: list[str], outcome: dict[str, Any]) -> Any:
    """A chain whose tool streams ``deltas`` to the run's answer through ``ctx.emit`` (as llm.chat does),
    then reports its cost as the budget step would; ``outcome`` gets what became of it."""

    async def chain(call: CallState) -> dict[str, Any]:
        assert call.emit is not None
        sent = 0
        try:
            for text in deltas:
                await call.emit("message.delta", {"channel": "answer", "text": text})
                sent += 1
        except StockadeError as exc:
            outcome["error"] = exc.code
            raise
        finally:
            outcome["sent"] = sent
            await call.emit("usage", {"tool": "llm.chat", "cost_usd": 0.001, "reserved_usd": 0.002, "tiers": []})
        return {"text": "".join(deltas)}

    return chain


async def test_what_a_tool_streams_counts_against_the_runs_output_limit() -> None:
    outcome: dict[str, Any] = {}
    sess, emitter, recorder, limits = _session(_streaming_tool(["x" * 100] * 100, outcome), max_output=2048)
    own = {"blob": "y" * 1000}
    await sess._emit({"type": "emit", "event": "custom", "data": own})  # the bundle's own first
    await sess._call({"type": "call", "id": 1, "tool": "llm.chat", "args": {}})
    # one count for both doors: the bundle's 1 KB and the tool's deltas reached the limit together
    size = len(encode({"d": {"channel": "answer", "text": "x" * 100}}, 1 << 30))  # as the bundle's emits count
    fit = (2048 - len(encode({"d": own}, 1 << 30))) // size
    assert 0 < fit < 100 and outcome == {"error": "limit.output", "sent": fit}, (fit, outcome)
    assert sess.outcome.limit == "limit.output" and limits == ["limit.output"]  # the worker kills the sandbox
    assert recorder.kinds == ["limit.output"]  # audited once, as an over-limit ctx.answer is
    assert emitter.deltas() == ["x" * 100] * fit and sess.emitter.bytes_emitted > 2048
    # the call's reply and its tool.result name the limit; the settlement's usage event still went out
    assert [d.get("code") for t, d in emitter.events if t == "tool.result"] == ["limit.output"]
    assert [t for t, _ in emitter.events].count("usage") == 1
    # the run takes no more output from any door, and no event of its calls is metered as output
    late = ToolOutput(sess, BUNDLE_EVENT_TYPES)
    with pytest.raises(StockadeError) as ei:
        await late("message.delta", {"channel": "answer", "text": "late"})
    assert ei.value.code == "limit.output"
    await late("usage", {"tool": "llm.chat"})
    assert emitter.deltas()[-1] != "late" and emitter.events[-1][0] == "usage"


async def test_what_a_tool_streams_keeps_to_the_event_rate_by_merging_and_leaves_the_bundle_its_share() -> None:
    """The bucket is the run's (10 events/s here). A model streaming faster is not the bundle's doing: its
    deltas neither end the run nor wait (a fast server sends thousands a second) - text that finds no token
    is held and merged with what follows, and a delta takes a token only while half the bucket is left, so
    the bundle's own burst that follows still passes."""
    outcome: dict[str, Any] = {}
    deltas = [f"w{i} " for i in range(200)]
    sess, emitter, _, limits = _session(_streaming_tool(deltas, outcome), events_per_s=10)
    t0 = time.monotonic()
    await sess._call({"type": "call", "id": 1, "tool": "llm.chat", "args": {}})
    took = time.monotonic() - t0
    assert outcome == {"sent": 200} and "".join(emitter.deltas()) == "".join(deltas)  # all of it, in order
    assert took < 0.5, took  # the model's pace, not the bucket's
    # 5 of the 10 tokens were the model's: 5 deltas on time, the rest merged into one at the call's end
    assert 2 <= len(emitter.deltas()) <= 7, emitter.deltas()
    kinds = [t for t, _ in emitter.events]
    assert kinds.index("tool.result") > max(i for i, k in enumerate(kinds) if k == "message.delta")
    assert sess.outcome.limit is None and limits == []
    for i in range(4):  # the bundle's own emits right after: its share is there
        await sess._emit({"type": "emit", "event": "custom", "data": {"i": i}})
    assert sess.outcome.limit is None, sess.outcome.limit


async def test_text_held_for_a_token_goes_out_when_one_is_due() -> None:
    """A model that pauses: what it sent before the pause is not held until the call ends."""
    sess, emitter, _, _ = _session(None, events_per_s=10)
    out = ToolOutput(sess, BUNDLE_EVENT_TYPES)
    for i in range(8):  # 5 on their tokens, the rest held
        await out("message.delta", {"channel": "answer", "text": f"{i} "})
    on_time = len(emitter.deltas())
    assert on_time < 8 and "".join(emitter.deltas()) != "".join(f"{i} " for i in range(8))
    emitter.emitted.clear()
    async with asyncio.timeout(5):  # a token is due within 0.1 s (10 a second)
        await emitter.emitted.wait()
    assert "".join(emitter.deltas()) == "".join(f"{i} " for i in range(8))
    assert len(emitter.deltas()) == on_time + 1  # the held text as one delta
    # another channel, or another event, first sends what is held: the stream keeps its order
    await out("message.delta", {"channel": "answer", "text": "a"})
    await out("message.delta", {"channel": "thinking", "text": "t"})
    await out("usage", {"tool": "llm.chat"})
    await out.flush()
    texts = [(d["channel"], d["text"]) for t, d in emitter.events if t == "message.delta"][on_time + 1:]
    assert texts == [("answer", "a"), ("thinking", "t")], texts
    assert emitter.events[-1][0] == "usage"


# --- finding 2, end to end: a real node, sandbox, SDK and fake provider ------------------------------

POLICY = """
version: 1
rules:
  - {id: llm, tool: llm.chat, verdict: allow}
"""


@pytest.fixture(params=["embedded", "production"])
def stack(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Sync on purpose: ``pg_url`` creates its database with asyncio.run."""
    if request.param == "embedded":
        return "embedded", {}
    return "production", dict(pg_url=request.getfixturevalue("pg_url"), redis_url=request.getfixturevalue("redis_url"),
                              redis_prefix=request.getfixturevalue("redis_prefix"))


@pytest.fixture
async def node(stack: tuple[str, dict[str, Any]], server: FakeLLMServer):
    kind, stores = stack
    server.reset()
    n = await start_node(settings_for(kind, make_data_dir(), **stores, openai_base_url=server.openai_base_url,
                                      openai_api_key="sk-test", anthropic_api_key=None, anthropic_base_url=None))
    try:
        yield n
    finally:
        await n.stop()


async def _run(node: Any, source: str, limits: str = "") -> tuple[Any, str, list]:
    tid, key = await node.tenant(budget_usd=100)
    c = node.client(key)
    assert (await c.put("/v1/policy", content=POLICY)).status_code == 200
    d = Path(make_data_dir()) / "llmbundle"
    d.mkdir()
    (d / "bundle.yaml").write_text(f"name: llmbundle\nversion: '1'\ntools: [llm.chat]\nlimits:\n  timeout_s: 40\n{limits}")
    (d / "main.py").write_text(textwrap.dedent(source))
    await node.rt.registry.register_dir(d, tid)
    r = await c.post("/v1/runs", json={"bundle": "llmbundle", "input": "hi"})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    events = await asyncio.wait_for(collect(c, run_id), 80)
    check_stream(events)
    return c, run_id, events


def _answer(events: list) -> str:
    return "".join(e.data["text"] for e in events if e.event == "message.delta" and e.data["channel"] == "answer")


async def test_a_streamed_answer_past_the_runs_output_limit_ends_the_run_and_stops_the_model(
    node: Any, server: FakeLLMServer
) -> None:
    # 3,000 words each; after 2,500 the provider holds the stream open: only a stopped call ends before the
    # run's time limit (the old code streamed 2,500 words into the answer, then waited there)
    words = tuple(f"w{i} " for i in range(3000))
    server.script = Script(deltas=words, input_tokens=20, hold_after_deltas=2500)
    c, run_id, events = await _run(node, """
        async def main(ctx):
            for _ in range(3):
                await ctx.llm.chat("tell me everything", max_tokens=20000)
            await ctx.answer("done")
    """, limits="  max_output_bytes: 2048\n")
    end = events[-1]
    assert end.event == "run.failed" and end.data["code"] == "limit.output", end.data
    results = [e.data for e in events if e.event == "tool.result"]
    assert [(r["tool"], r.get("code")) for r in results] == [("llm.chat", "limit.output")], results
    assert results[0]["duration_ms"] < 20_000  # cut when the limit was passed, not by a timeout
    assert server.count("/v1/chat/completions") == 1  # the bundle never got to its second call
    answer = _answer(events)
    assert 0 < len(answer) < 2048 and answer.startswith("w0 w1 ")
    run = (await c.get(f"/v1/runs/{run_id}")).json()
    assert len(run["output"]) < 2048 and run["output"] == answer, len(run["output"])
    # what was generated is charged: the tool.result, the usage event and the audit record agree
    usage = [e.data for e in events if e.event == "usage"]
    assert len(usage) == 1 and usage[0]["cost_usd"] == results[0]["cost_usd"] > 0, (usage, results)
    audit = (await c.get("/v1/audit", params={"run_id": run_id})).json()["data"]
    failed = [a for a in audit if a["kind"] == "tool.failed"]
    assert [a["code"] for a in failed] == ["limit.output"], audit
    assert failed[0]["cost_usd"] == results[0]["cost_usd"]
    assert [a["kind"] for a in audit].count("limit.output") == 1


async def test_a_streamed_answer_keeps_to_the_runs_event_rate_without_ending_it_or_slowing(
    node: Any, server: FakeLLMServer
) -> None:
    words = tuple(f"w{i} " for i in range(40))
    server.script = Script(deltas=words, input_tokens=20)
    _, _, events = await _run(node, """
        async def main(ctx):
            await ctx.llm.chat("tell me everything")
            for i in range(5):
                await ctx.emit("status", text=f"step {i}")
    """, limits="  max_events_per_s: 20\n")
    assert events[-1].event == "run.completed", events[-1].data
    assert _answer(events) == "".join(words)  # all of it, in order
    (result,) = [e.data for e in events if e.event == "tool.result"]
    deltas = [e for e in events if e.event == "message.delta"]
    # 10 of the bucket's 20 tokens for the model, 20 more a second: the 40 deltas merged into fewer
    assert len(deltas) <= 10 + 20 * result["duration_ms"] / 1000 + 1, (len(deltas), result)
    assert len(deltas) < len(words)


async def test_the_result_cost_is_what_the_usage_event_says_was_charged(node: Any, server: FakeLLMServer) -> None:
    server.script = Script(text="hi", input_tokens=100_000_000, output_tokens=2)
    _, _, events = await _run(node, """
        async def main(ctx):
            r = await ctx.llm.chat("hi")
            await ctx.emit("custom", name="cost", data={"cost_usd": r["cost_usd"], "uncapped": r["cost_uncapped_usd"]})
    """)
    assert events[-1].event == "run.completed", events[-1].data
    (cost,) = [e.data["data"] for e in events if e.event == "custom"]
    (usage,) = [e.data for e in events if e.event == "usage"]
    (result,) = [e.data for e in events if e.event == "tool.result"]
    assert cost["cost_usd"] == usage["cost_usd"] == result["cost_usd"] == usage["reserved_usd"], (cost, usage)
    assert cost["uncapped"] > 40


async def test_text_held_for_a_token_is_not_sent_once_the_run_is_over_a_limit() -> None:
    """Held text whose token comes due after the bundle's own emit took the run past its output limit is
    dropped: nothing past the limit is stored."""
    sess, emitter, _, limits = _session(None, events_per_s=10, max_output=4096)
    out = ToolOutput(sess, BUNDLE_EVENT_TYPES)
    for i in range(8):
        await out("message.delta", {"channel": "answer", "text": f"{i} "})
    sent = emitter.deltas()
    assert len(sent) < 8  # some held, a token due soon
    await sess._emit({"type": "emit", "event": "custom", "data": {"blob": "y" * 5000}})  # the bundle's own
    assert sess.outcome.limit == "limit.output" and limits == ["limit.output"]
    await out._when_due()  # what the timer runs
    await out.flush()
    assert emitter.deltas() == sent
