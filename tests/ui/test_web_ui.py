"""The web UI (ui/) in a real Chromium against a real node: connect, chat, tools, approvals."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture fails (make test) or skips with the reason
    expect = None  # type: ignore[assignment]

from tests.ui.conftest import UI

pytestmark = pytest.mark.timeout(90)

APPROVAL_POLICY = """\
version: 1
rules:
  - id: echo-needs-a-human
    tool: echo
    verdict: require_approval
    reason: a human checks every echo
prices:
  echo: 0.001
"""

# Records every text the answer box of an assistant bubble shows, in order: each delta is appended
# as a text node of its own, so the text up to each added node is one rendered state.
RECORD_ANSWERS = """() => {
  window.__answers = [];
  new MutationObserver((records) => {
    for (const r of records) {
      if (!(r.target.classList && r.target.classList.contains("answer"))) continue;
      for (const n of r.addedNodes) {
        if (n.nodeType !== Node.TEXT_NODE) continue;
        let shown = "";
        for (let x = r.target.firstChild; x; x = x.nextSibling) { shown += x.data; if (x === n) break; }
        window.__answers.push(shown);
      }
    }
  }).observe(document.getElementById("messages"), { childList: true, subtree: true });
}"""


async def connected(ui: UI) -> str:
    _, key = await ui.node.tenant()
    await ui.open(key)
    await expect(ui.page.locator("#whoami")).to_have_text(re.compile(r"^connected as "))
    return key


async def say(ui: UI, bundle: str, text: str):
    """Sends ``text`` to ``bundle`` with the Enter key; returns the new assistant bubble."""
    page = ui.page
    await page.select_option("#bundle", bundle)
    before = await page.locator(".msg.assistant").count()
    await page.fill("#input", text)
    await page.press("#input", "Enter")
    bubble = page.locator(".msg.assistant").nth(before)
    await expect(bubble).to_have_attribute("data-run", re.compile(r"\S"))  # the run was created
    return bubble


async def test_key_lists_bundles(ui: UI) -> None:
    await connected(ui)
    page = ui.page
    values = await page.locator("#bundle option").evaluate_all("os => os.map(o => o.value)")
    assert {"echo", "hello-tools"} <= set(values), values
    await page.select_option("#bundle", "echo")
    await expect(page.locator("#bundle-desc")).to_have_text("Streams the input back, word by word.")
    await expect(page.locator("#error")).to_have_text("")
    await expect(page.locator("#budget")).not_to_have_text("—")  # the side bar loaded the budgets
    assert ui.js_errors == [] and ui.console_errors == []


async def test_bad_key_shows_an_error(ui: UI) -> None:
    await ui.open("stk_not-a-real-key")
    page = ui.page
    await expect(page.locator("#error")).to_contain_text("auth.invalid")
    await expect(page.locator("#whoami")).to_have_text("")
    assert await page.locator("#bundle option").count() == 0
    assert ui.js_errors == []


async def test_echo_streams_word_by_word_in_one_conversation(ui: UI) -> None:
    key = await connected(ui)
    page = ui.page
    await page.evaluate(RECORD_ANSWERS)
    bubble = await say(ui, "echo", "the quick brown fox")
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".answer")).to_have_text("the quick brown fox ")
    # one rendered state per message.delta: the answer grew word by word, not in one piece
    assert await page.evaluate("window.__answers") == ["the ", "the quick ", "the quick brown ", "the quick brown fox "]
    await expect(page.locator(".msg.user").first).to_have_text("the quick brown fox")
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#cancel")).to_be_disabled()

    second = await say(ui, "echo", "again")
    await expect(second.locator(".meta")).to_have_text("done")
    c = ui.node.client(key)
    runs = [(await c.get(f"/v1/runs/{await b.get_attribute('data-run')}")).json() for b in (bubble, second)]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert runs[0]["conversation_id"] and runs[0]["conversation_id"] == runs[1]["conversation_id"]

    await page.click("#new-chat")
    await expect(page.locator(".msg")).to_have_count(0)
    third = await say(ui, "echo", "fresh")
    await expect(third.locator(".meta")).to_have_text("done")
    run3 = (await c.get(f"/v1/runs/{await third.get_attribute('data-run')}")).json()
    assert run3["conversation_id"] not in (None, runs[0]["conversation_id"])
    assert ui.js_errors == [] and ui.console_errors == []


async def test_tool_call_shows_the_tool_line(ui: UI) -> None:
    await connected(ui)
    bubble = await say(ui, "hello-tools", "hi")
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".tool")).to_have_count(1)
    await expect(bubble.locator(".tool")).to_have_text("⚙ echo → allow")
    await expect(bubble.locator(".answer")).to_have_text("The echo tool said 'hello' 1 time(s).")
    assert ui.js_errors == [] and ui.console_errors == []


async def put_policy(ui: UI, key: str, text: str) -> None:
    r = await ui.node.client(key).put("/v1/policy", content=text, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text


async def test_approval_from_the_side_bar(ui: UI) -> None:
    key = await connected(ui)
    await put_policy(ui, key, APPROVAL_POLICY)
    page = ui.page
    bubble = await say(ui, "hello-tools", "hi")
    pending = page.locator("#approvals li")
    await expect(pending).to_have_count(1)
    await expect(pending).to_contain_text("echo — a human checks every echo")
    await expect(pending.locator("code")).to_contain_text('"greeting":"hello"')
    await expect(page.locator("#approval-count")).to_have_text("1")
    await expect(bubble.locator(".tool").first).to_have_text("‖ waiting for approval of echo: a human checks every echo")

    shot = Path(tempfile.gettempdir()) / "stockade-ui-approval.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    # the layout holds: side bar left of the chat, the message box visible without scrolling
    aside, chat, form = [await page.locator(s).bounding_box() for s in ("aside", "#chat-pane", "#chat-form")]
    assert aside and chat and form
    assert aside["x"] + aside["width"] <= chat["x"] + 1
    assert form["y"] + form["height"] <= 800 + 1
    assert await page.evaluate("document.documentElement.scrollHeight <= innerHeight")  # the page itself never scrolls

    await pending.get_by_role("button", name="Approve").click()
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".tool")).to_have_text(
        ["‖ waiting for approval of echo: a human checks every echo", "▶ approval approved", "⚙ echo → allow $0.001000"])
    await expect(page.locator("#approvals li")).to_have_count(0)
    await expect(page.locator("#approval-count")).to_have_text("0")
    c = ui.node.client(key)
    decided = (await c.get("/v1/approvals", params={"status": "approved"})).json()["data"]
    assert [a["tool"] for a in decided] == ["echo"] and decided[0]["decided_by"]
    assert (await c.get(f"/v1/runs/{await bubble.get_attribute('data-run')}")).json()["status"] == "succeeded"
    await page.screenshot(path=str(shot.with_name("stockade-ui-approved.png")))
    assert ui.js_errors == [] and ui.console_errors == []


async def test_reject_from_the_side_bar_fails_the_call(ui: UI) -> None:
    key = await connected(ui)
    await put_policy(ui, key, APPROVAL_POLICY)
    page = ui.page
    bubble = await say(ui, "hello-tools", "hi")
    await page.locator("#approvals li").get_by_role("button", name="Reject").click()
    await expect(bubble.locator(".meta")).to_contain_text("failed")
    await expect(bubble.locator(".meta")).to_have_class("meta status-failed")
    await expect(bubble.locator(".tool.denied")).to_have_text("⚙ echo → approval.rejected")
    await expect(bubble.locator(".answer")).to_have_text("")
    c = ui.node.client(key)
    assert [a["tool"] for a in (await c.get("/v1/approvals", params={"status": "rejected"})).json()["data"]] == ["echo"]
    assert (await c.get(f"/v1/runs/{await bubble.get_attribute('data-run')}")).json()["status"] == "failed"
    assert ui.js_errors == []


async def test_two_approvers_each_vote_shows_as_it_is_cast(ui: UI) -> None:
    """approvers: 2 - the side bar's vote keeps the request pending and counts it ("1 of 2"); the run's
    bubble shows each vote (streamed as approval.vote) as it is cast, the second one made elsewhere."""
    key = await connected(ui)
    await put_policy(ui, key, APPROVAL_POLICY.replace(
        "    reason: a human checks every echo\n", "    reason: a human checks every echo\n    approval: {approvers: 2}\n"))
    page = ui.page
    bubble = await say(ui, "hello-tools", "hi")
    pending = page.locator("#approvals li")
    await expect(pending.locator(".votes")).to_have_text("0 of 2 approvals")
    await pending.get_by_role("button", name="Approve").click()
    waiting = "‖ waiting for approval of echo: a human checks every echo"
    await expect(bubble.locator(".tool")).to_have_text([waiting, "✓ approve (1 of 2 approvals)"])
    await expect(pending.locator(".votes")).to_have_text("1 of 2 approvals")  # the same item, its count moved on
    await expect(pending.get_by_role("button", name="Approve")).to_be_disabled()  # this key has voted
    c = ui.node.client(key)
    other = (await c.post("/v1/keys", json={"role": "approver"})).json()["api_key"]
    [apr] = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
    r = await ui.node.client(other).post(f"/v1/approvals/{apr['id']}/decision", json={"decision": "approve"})
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".tool")).to_have_text([
        waiting, "✓ approve (1 of 2 approvals)", "✓ approve (2 of 2 approvals)", "▶ approval approved",
        "⚙ echo → allow $0.001000"])
    await expect(page.locator("#approvals li")).to_have_count(0)
    assert ui.js_errors == [] and ui.console_errors == []
