"""Overhead of one ``llm.chat`` call through the tool vs. the same call made with the raw SDK.

Both run against the fake provider (tests/fakes/llm_servers.py) in this process,
streaming the same 20-delta answer, alternating raw and tool calls so drift hits
both alike. The tool's extra work is argument translation, the breaker, 20
``emit`` + 20 ``stream_chunk`` awaits (no-op sinks here), usage and pricing.
Bounded: about 2 s per provider (≤10 s in all).

    .venv/bin/python bench/llm_tool_bench.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.settings import Settings  # noqa: E402
from supervisor.tools.base import ToolContext  # noqa: E402
from supervisor.tools.llm import LlmChatArgs, LlmChatTool  # noqa: E402
from tests.fakes.llm_servers import FakeLLMServer, Script  # noqa: E402

SECONDS_PER_PROVIDER = 2.0
MAX_PAIRS = 400
TEXT = " ".join(f"w{i}" for i in range(20))  # 20 deltas
MESSAGES = [{"role": "user", "content": "Say twenty words."}]


async def _noop(*_: Any) -> None:
    return None


async def raw_openai(client: Any) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4.1-mini", messages=MESSAGES, max_tokens=256, stream=True, stream_options={"include_usage": True}
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            await _noop(chunk.choices[0].delta.content)


async def raw_anthropic(client: Any) -> None:
    stream = await client.messages.create(model="claude-haiku-4-5", max_tokens=256, messages=MESSAGES, stream=True)
    async for ev in stream:
        if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
            await _noop(ev.delta.text)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


async def bench(srv: FakeLLMServer) -> None:
    import anthropic
    import openai

    settings = Settings(
        openai_api_key="sk-bench",
        openai_base_url=srv.openai_base_url,
        anthropic_api_key="sk-ant-bench",
        anthropic_base_url=srv.anthropic_base_url,
    )
    tool = LlmChatTool(settings)
    ctx = ToolContext("t", "r", None, None, emit=_noop, stream_chunk=_noop)
    raw_clients: dict[str, Any] = {
        "openai": openai.AsyncOpenAI(api_key="sk-bench", base_url=srv.openai_base_url, max_retries=0),
        "anthropic": anthropic.AsyncAnthropic(
            api_key="sk-ant-bench", base_url=srv.anthropic_base_url, max_retries=0, open_telemetry=False
        ),
    }
    raw_calls = {"openai": raw_openai, "anthropic": raw_anthropic}
    models = {"openai": "openai/gpt-4.1-mini", "anthropic": "anthropic/claude-haiku-4-5"}
    print(f"{'provider':10} {'n':>4} {'raw p50':>9} {'raw p99':>9} {'tool p50':>9} {'tool p99':>9} {'overhead p50':>13}")
    for provider, model in models.items():
        args = LlmChatArgs.model_validate({"model": model, "messages": MESSAGES, "max_tokens": 256})
        client = raw_clients[provider]
        for _ in range(5):  # warm-up: imports, connection pools
            await raw_calls[provider](client)
            await tool.run(args, ctx)
        raw: list[float] = []
        via_tool: list[float] = []
        deadline = time.perf_counter() + SECONDS_PER_PROVIDER
        while time.perf_counter() < deadline and len(raw) < MAX_PAIRS:
            t0 = time.perf_counter()
            await raw_calls[provider](client)
            t1 = time.perf_counter()
            await tool.run(args, ctx)
            t2 = time.perf_counter()
            raw.append(t1 - t0)
            via_tool.append(t2 - t1)
        over = statistics.median(via_tool) - statistics.median(raw)
        print(
            f"{provider:10} {len(raw):>4} {pct(raw, 50):>7.2f}ms {pct(raw, 99):>7.2f}ms "
            f"{pct(via_tool, 50):>7.2f}ms {pct(via_tool, 99):>7.2f}ms {over * 1000:>+11.2f}ms"
        )
    await tool.aclose()
    for c in raw_clients.values():
        await c.close()


def main() -> None:
    with FakeLLMServer(Script(text=TEXT, input_tokens=12, output_tokens=20)) as srv:
        asyncio.run(bench(srv))


if __name__ == "__main__":
    main()
