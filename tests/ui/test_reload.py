"""A reload of the web UI comes back to the conversation and the run in view (found by a walkthrough: it
lost both; the key, kept in memory only, is asked for again by design). The page's address holds the ids
(``#c=…&r=…``, never the key); once a key is accepted the earlier turns are shown from the runs list and the
run in view is followed from its first event - live if it still runs."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture fails (make test) or skips with the reason
    expect = None  # type: ignore[assignment]

from tests.ui.conftest import UI
from tests.ui.test_walkthrough_fixes import WAITING, decide, gated, until_status
from tests.ui.test_web_ui import connected, say

pytestmark = pytest.mark.timeout(90)


def address(ui: UI) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(ui.page.url).fragment).items()}


async def test_a_reload_shows_the_conversation_again_and_goes_on_with_it(ui: UI) -> None:
    key = await connected(ui)
    page = ui.page
    first = await say(ui, "echo", "hello there")
    await expect(first.locator(".meta")).to_have_text("done")
    second = await say(ui, "echo", "second turn")
    await expect(second.locator(".meta")).to_have_text("done")
    run2 = await second.get_attribute("data-run")
    held = address(ui)
    assert held["r"] == run2 and key not in page.url
    await page.reload()
    await expect(page.locator(".msg")).to_have_count(0)  # nothing shown before a key is accepted
    await ui.connect(key)
    await expect(page.locator(".msg.user")).to_have_text(["hello there", "second turn"])
    await expect(page.locator(".msg.assistant .answer")).to_have_text(["hello there", "second turn"])
    await expect(page.locator(".msg.assistant .meta")).to_have_text(["done", "done"])
    await expect(page.locator(".msg.assistant").nth(1)).to_have_attribute("data-run", run2)
    await expect(page.locator("#send")).to_be_enabled()
    third = await say(ui, "echo", "third")  # the same conversation goes on
    await expect(third.locator(".meta")).to_have_text("done")
    c = ui.node.client(key)
    runs = [(await c.get(f"/v1/runs/{await b.get_attribute('data-run')}")).json()
            for b in await page.locator(".msg.assistant").all()]
    assert {r["conversation_id"] for r in runs} == {held["c"]}
    await page.click("#new-chat")  # a new conversation leaves the address
    assert urlsplit(page.url).fragment == ""
    assert ui.js_errors == [] and ui.console_errors == []


async def test_a_run_still_waiting_is_followed_live_after_a_reload(ui: UI) -> None:
    key = await gated(ui)
    page = ui.page
    bubble = await say(ui, "gated", "go")
    await expect(bubble.locator(".tool")).to_have_text([WAITING])
    run_id = await bubble.get_attribute("data-run")
    await page.reload()
    await ui.connect(key)
    bubble = page.locator(".msg.assistant")
    await expect(bubble).to_have_attribute("data-run", run_id)
    await expect(bubble.locator(".tool")).to_have_text([WAITING])  # replayed from the store
    await expect(page.locator("#cancel")).to_be_enabled()
    await expect(page.locator("#send")).to_be_disabled()
    await decide(ui, key, "approve")  # live from here
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".answer")).to_have_text("one two three four ")
    await until_status(ui.node.client(key), run_id, "succeeded")
    await expect(page.locator("#send")).to_be_enabled()
    assert ui.js_errors == [] and ui.console_errors == []


@pytest.mark.parametrize("fragment", ["#c=ui-x&r=run_doesnotexist", "#c=ui-x&r=<img>", "#r=run_x", "#c=a&r=b&c=z"])
async def test_an_address_naming_no_run_of_the_key_starts_afresh(ui: UI, fragment: str) -> None:
    """Another tenant's run, a made-up id or a mangled address: a clear error at most, nothing shown, and
    the next message starts a conversation of its own."""
    _, key = await ui.node.tenant()
    page = ui.page
    await page.goto(ui.node.base_url + "/ui/" + fragment)
    await ui.connect(key)
    await expect(page.locator("#whoami")).to_have_text(re.compile(r"^connected as "))
    if fragment.startswith("#c=ui-x&r=run_"):
        await expect(page.locator("#error")).to_have_text(re.compile(r"^not_found: "))
        assert urlsplit(page.url).fragment == ""
    await expect(page.locator(".msg")).to_have_count(0)
    bubble = await say(ui, "echo", "fresh")
    await expect(bubble.locator(".meta")).to_have_text("done")
    run = (await ui.node.client(key).get(f"/v1/runs/{await bubble.get_attribute('data-run')}")).json()
    assert run["conversation_id"] not in ("ui-x", "a", "z")
    assert ui.js_errors == []
