"""The example bundles do what the README says (run here with a recording ctx; the e2e suite runs them sandboxed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "bundles"


class RecordingCtx:
    def __init__(self, text: str) -> None:
        self.input, self.history, self.run_id, self.bundle = text, [], "run-1", "test"
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def emit(self, type: str, **data: Any) -> None:
        self.events.append((type, data))

    async def answer(self, text: str) -> None:
        await self.emit("message.delta", channel="answer", text=text)

    async def call(self, tool: str, **args: Any) -> Any:
        self.calls.append((tool, args))
        return dict(args)  # what the built-in echo tool returns

    def answered(self) -> list[str]:
        return [d["text"] for t, d in self.events if t == "message.delta" and d["channel"] == "answer"]


def load_main(folder: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{folder.replace('-', '_')}", EXAMPLES / folder / "main.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


async def test_echo_streams_word_by_word() -> None:
    ctx = RecordingCtx("hello there  world")
    await load_main("echo")(ctx)
    assert ctx.answered() == ["hello ", "there ", "world "]
    assert ctx.calls == []


async def test_hello_tools_calls_echo_emits_and_answers() -> None:
    ctx = RecordingCtx("hi")
    await load_main("hello-tools")(ctx)
    assert ctx.calls == [("echo", {"greeting": "hello", "n": 1})]
    assert ctx.events[0] == ("custom", {"name": "greeting", "data": {"greeting": "hello", "n": 1}})
    assert "hello" in "".join(ctx.answered())
