"""Task in words -> Python from the LLM -> ``code.run`` -> output; one fix round on failure.

Input that already is Python (a ``` fenced block, or text that parses as Python
and has a ``print(``, an ``import`` or several lines) is run as it is, so the
bundle is useful without any LLM configured. ``code.run`` executes in a second
sandbox without any socket at all: the code cannot call tools or the network.
"""

import ast
import re

from stockade_sdk import ToolError

MODEL = "openai/gpt-4.1-mini"
SYSTEM = (
    "You write small, self-contained Python 3 programs (standard library only, no network, no input()). "
    "Reply with one ```python fenced code block that prints its results, then at most one sentence."
)
NOT_CONFIGURED = (
    "No LLM provider is configured, so I can only run Python you paste (e.g. ```print(2 ** 10)```): set "
    "STOCKADE_OPENAI_API_KEY (or STOCKADE_OPENAI_BASE_URL for any OpenAI-compatible server such as Ollama or "
    "vLLM) or STOCKADE_ANTHROPIC_API_KEY, then restart Stockade."
)
FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)
MAX_SHOWN = 4000


def code_block(text):
    """The Python in ``text``: its first fenced block, or all of it when it is Python rather than words
    (it parses and has a ``print(``, an ``import`` or several lines: a bare word like 'hello' parses too)."""
    m = FENCE.search(text)
    if m:
        return m.group(1).strip("\n") or None
    stripped = text.strip()
    if stripped.startswith("```"):  # an unterminated fence
        return stripped.partition("\n")[2].strip() or None
    try:
        ast.parse(stripped)
    except SyntaxError:
        return None
    return stripped if ("print(" in stripped or "import " in stripped or "\n" in stripped) else None


async def run_and_show(ctx, code, attempt):
    await ctx.status("running the code" if attempt == 1 else "running the fixed code")
    r = await ctx.call("code.run", code=code, timeout_s=20)
    out = (r.get("stdout") or "") + (r.get("stderr") or "")
    if len(out) > MAX_SHOWN:
        out = "... " + out[-MAX_SHOWN:]
    exit_code = r.get("exit_code")
    label = "Output" if exit_code == 0 else f"Output (exit status {exit_code}{', ' + r['limit'] if r.get('limit') else ''})"
    await ctx.answer(f"\n\n**{label}:**\n```\n{out.rstrip() or '(nothing printed)'}\n```\n")
    files = [f["path"] for f in r.get("files") or []]
    if files:
        await ctx.answer(f"Files written: {', '.join(files)}\n")
    await ctx.emit("custom", name="code.result", data={
        "attempt": attempt, "exit_code": exit_code, "stdout": r.get("stdout", ""), "stderr": r.get("stderr", ""),
        "files": files,
    })
    return r


async def ask(ctx, messages):
    """One streamed LLM reply (the tool streams it to the answer channel); its text, or None if unconfigured."""
    try:
        reply = await ctx.llm.chat(messages, model=MODEL, system=SYSTEM, max_tokens=2000)
    except ToolError as exc:
        if exc.code == "llm.unconfigured":
            return None
        raise
    return reply["text"]


def history(ctx):
    return [{"role": m["role"], "content": m["content"]} for m in ctx.history
            if m.get("role") in ("user", "assistant") and str(m.get("content") or "").strip()]


async def main(ctx):
    task = ctx.input.strip()
    if not task:
        await ctx.answer("Describe a small task (e.g. 'the first 20 primes') or paste Python to run.")
        return
    messages = history(ctx) + [{"role": "user", "content": task}]
    code = code_block(task)  # pasted Python runs as it is
    reply = None
    if code is None:
        await ctx.status("asking the model for code")
        reply = await ask(ctx, messages)
        if reply is None:
            await ctx.answer(NOT_CONFIGURED)
            return
        code = code_block(reply)
        if code is None:
            await ctx.answer("\n\n(The model's reply has no Python code to run.)")
            return
    result = await run_and_show(ctx, code, 1)
    if result.get("exit_code") == 0:
        return
    await ctx.status("the code failed; asking the model for a fix")
    stderr = (result.get("stderr") or result.get("stdout") or "")[-3000:]
    messages += [
        {"role": "assistant", "content": reply or f"```python\n{code}\n```"},
        {"role": "user", "content": f"Running it failed (exit status {result.get('exit_code')}):\n```\n{stderr}\n```\n"
                                    "Reply with the whole corrected program in one ```python block."},
    ]
    await ctx.answer("\n")
    fixed = await ask(ctx, messages)  # the fix streams below the failed output
    if fixed is None:  # pasted code and no LLM: the output above is the answer
        await ctx.answer("(No LLM provider is configured, so I cannot offer a fix.)")
        return
    code = code_block(fixed)
    if code is None:
        await ctx.answer("\n\n(The model's reply has no Python code to run.)")
        return
    await run_and_show(ctx, code, 2)
