"""Multi-turn chat: the conversation so far plus the new message go to ``llm.chat``.

The tool streams the model's deltas to the run's ``answer`` and ``thinking``
channels itself, so this bundle never re-emits the text it gets back.
"""

from stockade_sdk import ToolError

# Tried in order; a model whose provider is not configured is skipped.
# Edit to taste, e.g. "openai/llama3.2:3b" for Ollama behind STOCKADE_OPENAI_BASE_URL.
MODELS = ("openai/gpt-4.1-mini", "anthropic/claude-haiku-4-5")
SYSTEM = "You are a helpful, concise assistant."
NOT_CONFIGURED = (
    "No LLM provider is configured yet: set STOCKADE_OPENAI_API_KEY (or STOCKADE_OPENAI_BASE_URL for any "
    "OpenAI-compatible server such as Ollama or vLLM) or STOCKADE_ANTHROPIC_API_KEY, then restart Stockade."
)


def conversation(history, text):
    """Earlier turns (empty ones dropped: providers refuse them) followed by the new user message."""
    messages = [
        {"role": m["role"], "content": m["content"]}
        for m in history
        if m.get("role") in ("user", "assistant") and str(m.get("content") or "").strip()
    ]
    messages.append({"role": "user", "content": text})
    return messages


async def main(ctx):
    text = ctx.input.strip()
    if not text:
        await ctx.answer("Say something and I will answer.")
        return
    messages = conversation(ctx.history, text)
    for model in MODELS:
        try:
            await ctx.llm.chat(messages, model=model, system=SYSTEM)  # streams to the answer channel
            return
        except ToolError as exc:
            if exc.code != "llm.unconfigured":
                raise
    await ctx.answer(NOT_CONFIGURED)
