"""What a later walkthrough of the web UI found, each in a real Chromium against a real node.

More than a page of pending approvals hid the oldest; an Enter that confirmed an IME composition sent the
message; a refused send lost the text and left the bubble as if delivered, and keys that cannot start runs
were offered Send; a link to a run without a conversation showed unrelated runs as its earlier turns, and
an over-long conversation id in the address broke every send; a link opened in a tab already on the UI
did nothing; the view jumped to the bottom on every event; two Connects raced; another key went on with
the last key's conversation; a narrow screen scrolled sideways; a key pasted with smart quotes gave a raw
browser error; tiny budget caps showed as $0.00; a key that had voted was offered Approve again.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture fails (make test) or skips with the reason
    expect = None  # type: ignore[assignment]

from supervisor.ids import new_id
from supervisor.stores.records import Approval
from tests.ui.conftest import UI
from tests.ui.test_attack_ui_session7 import open_bundle
from tests.ui.test_hostile_content import upload
from tests.ui.test_walkthrough_fixes import COUNT_FETCHES, until_fetched, until_status
from tests.ui.test_web_ui import APPROVAL_POLICY, connected, put_policy, say

pytestmark = pytest.mark.timeout(90)

TWO_APPROVERS = APPROVAL_POLICY.replace(
    "    reason: a human checks every echo\n", "    reason: a human checks every echo\n    approval: {approvers: 2}\n")


def address(ui: UI) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(ui.page.url).fragment).items()}


async def run_without_conversation(ui: UI, key: str, text: str) -> str:
    c = ui.node.client(key)
    r = await c.post("/v1/runs", json={"bundle": "echo", "input": text})
    assert r.status_code == 201, r.text
    await until_status(c, r.json()["id"], "succeeded")
    return r.json()["id"]


async def test_more_than_a_page_of_pending_approvals_are_all_listed(ui: UI) -> None:
    """GET /v1/approvals answers 100 a page, newest first: the side bar showed the newest 100 and counted
    100 of 151, and the oldest request - the one waited on longest - could not be reached. It pages now."""
    tenant, key = await ui.node.tenant()
    now = time.time()
    store = ui.node.rt.services.approvals
    for i in range(151):
        await store.create(Approval(new_id("apr_"), tenant, "run_nosuchrun", "oldest" if i == 0 else "echo",
                                    "h" * 64, {"n": i}, None, f"request {i}", "pending", now - 1000 + i, now + 3600))
    await ui.open(key)
    page = ui.page
    await expect(page.locator("#approval-count")).to_have_text("151")
    await expect(page.locator("#approvals li")).to_have_count(151)
    await expect(page.locator("#approvals li").first).to_contain_text("oldest — request 0")
    await expect(page.locator("#approvals li").last).to_contain_text("echo — request 150")
    assert ui.js_errors == []


async def test_enter_that_confirms_an_ime_composition_does_not_send(ui: UI) -> None:
    await connected(ui)
    page = ui.page
    await page.select_option("#bundle", "echo")
    await page.fill("#input", "にほんご")
    # the send would be synchronous up to the user's bubble: looked at in the same task as the keys
    shown = await page.evaluate("""() => {
      const input = document.getElementById("input");
      input.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", isComposing: true, bubbles: true, cancelable: true }));
      const ime = new KeyboardEvent("keydown", { key: "Enter", bubbles: true, cancelable: true });
      Object.defineProperty(ime, "keyCode", { value: 229 });
      input.dispatchEvent(ime);
      return [document.querySelectorAll(".msg").length, input.value];
    }""")
    assert shown == [0, "にほんご"], shown
    bubble = await say(ui, "echo", "にほんご")  # a plain Enter still sends
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(page.locator(".msg.user")).to_have_text(["にほんご"])
    assert ui.js_errors == []


async def test_a_refused_send_keeps_the_text_and_drops_the_bubble(ui: UI) -> None:
    """422 (input too large): the textarea was emptied and the user's bubble stayed as if delivered."""
    await connected(ui)
    page = ui.page
    await page.select_option("#bundle", "echo")
    big = "x" * (256 * 1024 + 10)
    await page.fill("#input", big)
    await page.click("#send")
    await expect(page.locator("#error")).to_have_text(re.compile(r"\S"))
    await expect(page.locator(".msg")).to_have_count(0)
    assert await page.input_value("#input") == big
    await expect(page.locator("#send")).to_be_enabled()
    await page.fill("#input", "small")
    bubble = await say(ui, "echo", "small")
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(page.locator("#error")).to_have_text("")
    await expect(page.locator(".msg.user")).to_have_text(["small"])
    assert ui.js_errors == []


async def test_a_send_lost_to_the_network_keeps_the_text(ui: UI) -> None:
    await connected(ui)
    page = ui.page
    await page.select_option("#bundle", "echo")

    async def refuse(route: Any) -> None:
        if route.request.method == "POST":
            await route.abort()
        else:
            await route.continue_()

    await page.route("**/v1/runs", refuse)
    await page.fill("#input", "are you there")
    await page.press("#input", "Enter")
    await expect(page.locator("#error")).to_have_text(re.compile(r"\S"))
    await expect(page.locator(".msg")).to_have_count(0)
    assert await page.input_value("#input") == "are you there"
    await page.unroute("**/v1/runs", refuse)
    await page.press("#input", "Enter")  # the same text, sent again
    await expect(page.locator(".msg.assistant .meta")).to_have_text(["done"])
    await expect(page.locator(".msg.user")).to_have_text(["are you there"])
    assert await page.input_value("#input") == ""
    assert ui.js_errors == []


async def test_a_key_that_cannot_start_runs_is_not_offered_send(ui: UI) -> None:
    admin = await connected(ui)
    page = ui.page
    viewer = (await ui.node.client(admin).post("/v1/keys", json={"role": "viewer"})).json()["api_key"]
    await ui.connect(viewer)
    await expect(page.locator("#whoami")).to_have_text("connected as viewer")
    await expect(page.locator("#send")).to_be_disabled()
    await expect(page.locator("#cancel")).to_be_disabled()
    await expect(page.locator("#send-note")).to_be_visible()
    await expect(page.locator("#send-note")).to_have_text("This key cannot start runs: that needs an admin or member key.")
    await page.fill("#input", "hello")
    shown = await page.evaluate("""() => {
      document.getElementById("input").dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true, cancelable: true }));
      return document.querySelectorAll(".msg").length;
    }""")
    assert shown == 0
    await ui.connect(admin)
    await expect(page.locator("#whoami")).to_have_text("connected as admin")
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#send-note")).to_be_hidden()
    bubble = await say(ui, "echo", "hello")
    await expect(bubble.locator(".meta")).to_have_text("done")
    assert ui.js_errors == []


async def test_a_link_to_a_run_without_a_conversation_shows_no_other_runs(ui: UI) -> None:
    """Runs made through the API without a conversation_id: every one matched (null === null) as an
    earlier turn of the one linked to."""
    _, key = await ui.node.tenant()
    await run_without_conversation(ui, key, "first")
    second = await run_without_conversation(ui, key, "second")
    page = ui.page
    await page.goto(ui.node.base_url + f"/ui/#c=ui-link&r={second}")
    await ui.connect(key)
    await expect(page.locator(f".msg.assistant[data-run='{second}'] .meta")).to_have_text("done")
    await expect(page.locator(".msg.user")).to_have_text(["second"])
    await expect(page.locator(".msg.assistant")).to_have_count(1)
    assert ui.js_errors == []


async def test_an_address_with_a_conversation_id_the_server_refuses_starts_afresh(ui: UI) -> None:
    """c= took up to 128 characters, the server 64: every send of the conversation was input.invalid."""
    _, key = await ui.node.tenant()
    run = await run_without_conversation(ui, key, "linked")
    long = "a" * 65
    page = ui.page
    await page.goto(ui.node.base_url + f"/ui/#c={long}&r={run}")
    await ui.connect(key)
    await expect(page.locator("#whoami")).to_have_text(re.compile(r"^connected as "))
    bubble = await say(ui, "echo", "fresh")
    await expect(bubble.locator(".meta")).to_have_text("done")
    made = (await ui.node.client(key).get(f"/v1/runs/{await bubble.get_attribute('data-run')}")).json()
    assert made["conversation_id"] and made["conversation_id"] != long
    await expect(page.locator("#error")).to_have_text("")
    assert ui.js_errors == []


async def test_a_link_opened_in_the_open_tab_loads_its_conversation(ui: UI) -> None:
    key = await connected(ui)
    page = ui.page
    first = await say(ui, "echo", "alpha")
    await expect(first.locator(".meta")).to_have_text("done")
    link = address(ui)
    await page.click("#new-chat")
    other = await say(ui, "echo", "beta")
    await expect(other.locator(".meta")).to_have_text("done")
    await page.evaluate("(h) => { location.hash = h; }", f"#c={link['c']}&r={link['r']}")
    await expect(page.locator(f".msg.assistant[data-run='{link['r']}'] .meta")).to_have_text("done")
    await expect(page.locator(".msg.user")).to_have_text(["alpha"])
    more = await say(ui, "echo", "gamma")  # goes on in the linked conversation
    await expect(more.locator(".meta")).to_have_text("done")
    made = (await ui.node.client(key).get(f"/v1/runs/{await more.get_attribute('data-run')}")).json()
    assert made["conversation_id"] == link["c"]
    assert ui.js_errors == []


LINES = """
async def main(ctx):
    for i in range(80):
        await ctx.answer(f"line {i}\\n")
    await ctx.call("echo", n=1)
    for i in range(80):
        await ctx.answer(f"more {i}\\n")
"""

AT_BOTTOM = "() => { const m = document.getElementById('messages'); return m.scrollTop + m.clientHeight >= m.scrollHeight - 2; }"
FRAMES = "() => new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(() => ok())))"


async def test_the_view_follows_the_answer_only_from_the_bottom(ui: UI) -> None:
    key = await connected(ui)
    await put_policy(ui, key, APPROVAL_POLICY)
    await upload(ui, key, "lines", LINES)
    await open_bundle(ui, "lines")
    page = ui.page
    bubble = await say(ui, "lines", "go")
    await expect(page.locator("#approvals li")).to_have_count(1)
    await expect(bubble.locator(".answer")).to_contain_text("line 79")
    await page.wait_for_function(AT_BOTTOM)  # at the bottom, it follows the answer
    await page.evaluate("() => { document.getElementById('messages').scrollTop = 0; }")  # the user reads from the top
    c = ui.node.client(key)
    [pending] = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
    assert (await c.post(f"/v1/approvals/{pending['id']}/decision", json={"decision": "approve"})).status_code == 200
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".answer")).to_contain_text("more 79")
    await page.evaluate(FRAMES)
    assert await page.evaluate("document.getElementById('messages').scrollTop") == 0
    assert ui.js_errors == []


async def test_two_connects_in_flight_leave_one_poll_and_the_last_key(ui: UI) -> None:
    """A viewer key's Connect, its /v1/me slow, then an admin key's: the viewer's late answer relabelled the
    page ("connected as viewer", Approve / Reject disabled) and left a second poll running."""
    page = ui.page
    await page.add_init_script(COUNT_FETCHES)
    await page.clock.install()
    _, admin = await ui.node.tenant()
    viewer = (await ui.node.client(admin).post("/v1/keys", json={"role": "viewer"})).json()["api_key"]
    held, release = asyncio.Event(), asyncio.Event()

    async def me(route: Any) -> None:
        if viewer in (route.request.headers.get("authorization") or ""):
            held.set()
            await release.wait()
        await route.continue_()

    await page.route("**/v1/me", me)
    await ui.open(viewer)
    await asyncio.wait_for(held.wait(), 20)
    await ui.connect(admin)
    await expect(page.locator("#whoami")).to_have_text("connected as admin")
    async with page.expect_event("requestfinished", lambda r: r.url.endswith("/v1/me")
                                 and viewer in (r.headers.get("authorization") or "")):
        release.set()
    for _round in range(3):  # the poll runs: one request a round, every 3 s
        before = await page.evaluate("window.__fetches.filter((u) => u.includes('/v1/budgets')).length")
        await page.clock.run_for(3_100)
        await until_fetched(page, "/v1/budgets", before + 1)
    await expect(page.locator("#budget")).not_to_have_text("—")
    approvals = await page.evaluate("window.__fetches.filter((u) => u.includes('/v1/approvals')).length")
    await page.clock.run_for(3_100)
    await until_fetched(page, "/v1/approvals", approvals + 1)
    await page.evaluate(FRAMES)
    assert await page.evaluate("window.__fetches.filter((u) => u.includes('/v1/approvals')).length") == approvals + 1
    await expect(page.locator("#whoami")).to_have_text("connected as admin")
    await expect(page.locator("#approval-note")).to_be_hidden()
    assert await page.evaluate("window.__fetches.filter((u) => u.includes('/v1/bundles')).length") == 1
    assert ui.js_errors == []


async def test_another_key_starts_a_fresh_conversation(ui: UI) -> None:
    key = await connected(ui)
    page = ui.page
    first = await say(ui, "echo", "tenant one's secret")
    await expect(first.locator(".meta")).to_have_text("done")
    old = address(ui)["c"]
    _, other = await ui.node.tenant()
    await ui.connect(other)
    await expect(page.locator(".msg")).to_have_count(0)
    assert urlsplit(page.url).fragment == ""
    bubble = await say(ui, "echo", "hello")
    await expect(bubble.locator(".meta")).to_have_text("done")
    made = (await ui.node.client(other).get(f"/v1/runs/{await bubble.get_attribute('data-run')}")).json()
    assert made["conversation_id"] and made["conversation_id"] != old
    await ui.connect(other)  # the same key again: the conversation stays
    await expect(page.locator("#whoami")).to_have_text(re.compile(r"^connected as "))
    await expect(page.locator(".msg.user")).to_have_text(["hello"])
    assert key != other and ui.js_errors == []


async def test_a_narrow_screen_has_no_sideways_scroll(ui: UI) -> None:
    page = ui.page
    await page.set_viewport_size({"width": 390, "height": 844})
    await connected(ui)
    await page.select_option("#bundle", "echo")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    for sel in ("#send", "#cancel", "#input", "#key-save", "#api-key", "#bundle"):
        box = await page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844, (sel, box)
    bubble = await say(ui, "echo", "narrow")
    await expect(bubble.locator(".meta")).to_have_text("done")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    assert ui.js_errors == []


@pytest.mark.parametrize("bad", ["\u201cstk_abc\u201d", "stk_abc\u200b"])  # smart quotes, a zero-width space
async def test_a_key_with_characters_no_key_has_gets_a_clear_message(ui: UI, bad: str) -> None:
    await ui.open(bad)
    page = ui.page
    await expect(page.locator("#error")).to_have_text(
        "This key has characters an API key cannot have (quotes, spaces or invisible characters?): paste it again.")
    await expect(page.locator("#whoami")).to_have_text("")
    assert ui.js_errors == []


async def test_a_tiny_budget_cap_is_not_shown_as_zero(ui: UI) -> None:
    key = await connected(ui)
    r = await ui.node.client(key).put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 0.00001}]})
    assert r.status_code == 200, r.text
    tenant = r.json()["data"][0]["scope_id"]
    await ui.page.click("#key-save")
    await expect(ui.page.locator("#budget .account")).to_have_text([f"tenant {tenant}: $0.0000 of $0.00001"])
    assert ui.js_errors == []


async def test_a_key_that_voted_is_not_offered_approve_again_after_a_reload(ui: UI) -> None:
    key = await connected(ui)
    await put_policy(ui, key, TWO_APPROVERS)
    page = ui.page
    c = ui.node.client(key)
    await say(ui, "hello-tools", "hi")
    pending = page.locator("#approvals li")
    await expect(pending.locator(".votes")).to_have_text("0 of 2 approvals")
    await pending.get_by_role("button", name="Approve").click()
    await expect(pending.locator(".votes")).to_have_text("1 of 2 approvals")
    assert (await c.post("/v1/runs", json={"bundle": "hello-tools", "input": "another"})).status_code == 201
    await page.reload()
    await ui.connect(key)
    await expect(pending).to_have_count(2)
    voted, fresh = pending.nth(0), pending.nth(1)
    await expect(fresh.get_by_role("button", name="Approve")).to_be_enabled()  # the buttons are armed
    for name in ("Approve", "Reject"):
        await expect(voted.get_by_role("button", name=name)).to_be_disabled()
    await expect(voted.locator(".voted")).to_have_text("you voted")
    await expect(fresh.locator(".voted")).to_have_count(0)
    assert ui.js_errors == []
