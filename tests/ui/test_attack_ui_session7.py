"""The web UI against a hostile bundle and hostile neighbours on its origin, in a real Chromium.

Beyond test_hostile_content.py: markup assembled from pieces across events, strings long enough to
push the page's controls out of reach, outputs big enough to freeze the page, and the API key, which
other pages of the same origin (the API docs run a CDN's script) must not find.
"""

from __future__ import annotations

import re

import pytest

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture fails (make test) or skips with the reason
    expect = None  # type: ignore[assignment]

from tests.ui.conftest import UI
from tests.ui.test_hostile_content import assert_inert, upload, watched
from tests.ui.test_web_ui import connected, say

pytestmark = pytest.mark.timeout(120)


async def open_bundle(ui: UI, name: str) -> None:
    await ui.page.click("#key-save")  # reconnect: the bundle list now has the upload
    await expect(ui.page.locator(f"#bundle option[value='{name}']")).to_have_count(1)


PIECES = """
async def main(ctx):
    # tags and entities assembled from pieces, one event each: the page only ever appends text
    for piece in ["<im", "g src=x one", "rror=window.__xss=1", ">", "<scr", "ipt>window.__xss=1</scr", "ipt>",
                  "&l", "t;b&g", "t;", "<!-", "- x --", ">", "\\u202e", "txt.exe", "\\u200b"]:
        await ctx.answer(piece)
    for piece in ["<svg on", "load=window.__xss=1>"]:
        await ctx.thinking(piece)
    await ctx.status("<b>status</b>")
"""


async def test_markup_split_across_events_stays_text(ui: UI) -> None:
    await watched(ui)
    key = await connected(ui)
    await upload(ui, key, "pieces", PIECES)
    await open_bundle(ui, "pieces")
    bubble = await say(ui, "pieces", "x")
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".answer")).to_have_text(
        "<img src=x onerror=window.__xss=1><script>window.__xss=1</script>&lt;b&gt;<!-- x -->\u202etxt.exe\u200b")
    await expect(bubble.locator(".thinking")).to_have_text("<svg onload=window.__xss=1>")
    await assert_inert(ui)


LONG = "W" * 30_000
LONGER = f"""
LONG = {LONG!r}


async def main(ctx):
    await ctx.answer(LONG)
    await ctx.thinking(LONG)
    await ctx.status(LONG)
    await ctx.citation(LONG, title=LONG, source=LONG)
    await ctx.followups([LONG])
    try:
        await ctx.call(LONG[:200])
    except Exception:
        pass
    raise RuntimeError(LONG)
"""


async def test_long_unbroken_strings_keep_the_controls_in_reach(ui: UI) -> None:
    """One word of 30,000 characters in every field a run shows: it must wrap (or scroll inside its
    bubble), not widen the chat column until the message box and its Send / Cancel buttons leave the
    window, nor make the page itself scroll sideways."""
    await watched(ui)
    key = await connected(ui)
    await upload(ui, key, "longer", LONGER, description=LONG[:2000])
    await open_bundle(ui, "longer")
    page = ui.page
    bubble = await say(ui, "longer", LONG)
    await expect(bubble.locator(".meta")).to_have_text(re.compile("^failed: "))
    assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth + 1"), "the page scrolls sideways"
    assert await page.evaluate("document.documentElement.scrollHeight <= innerHeight + 1"), "the page scrolls"
    for sel in ("#input", "#send", "#cancel", "#new-chat", "#key-save", "#bundle"):
        box = await page.locator(sel).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 1280 + 1, (sel, box)
        assert box["y"] >= 0 and box["y"] + box["height"] <= 800 + 1, (sel, box)
    # and they still work: the next message goes out
    await page.select_option("#bundle", "echo")
    second = await say(ui, "echo", "still here")
    await expect(second.locator(".meta")).to_have_text("done")
    await assert_inert(ui)


BIG = """
import asyncio

LINE = "y" * 3000 + "\\n"


async def main(ctx):
    for i in range(2000):  # 6 MB in 2,000 deltas: within the output limit, paced under the event rate limit
        await ctx.answer(LINE)
        if i % 100 == 99:
            await asyncio.sleep(0.25)
    await ctx.thinking("end")
"""


async def test_a_big_output_in_many_deltas_does_not_freeze_the_page(ui: UI) -> None:
    """Each delta read the messages' scrollHeight (a synchronous layout of the whole answer so far) and
    `textContent +=` copied the answer so far: quadratic. 3 MB in 1,000 deltas kept the page frozen for
    four minutes after the run had ended (6 MB: for good); the page must answer throughout and show the
    end of the run when it comes."""
    import asyncio
    import time

    key = await connected(ui)
    await upload(ui, key, "big", BIG)
    await open_bundle(ui, "big")
    page = ui.page
    bubble = await say(ui, "big", "x")
    c = ui.node.client(key)
    run_id = await bubble.get_attribute("data-run")
    slowest, status = 0.0, "running"
    while status in ("queued", "running"):  # probe the page's main thread while the run streams
        t0 = time.monotonic()
        await asyncio.wait_for(page.evaluate("document.querySelectorAll('.answer').length"), 10)
        slowest = max(slowest, time.monotonic() - t0)
        status = (await c.get(f"/v1/runs/{run_id}")).json()["status"]
        await asyncio.sleep(0.1)  # a probe's interval, not a synchronisation
    assert status == "succeeded"
    await expect(bubble.locator(".meta")).to_have_text("done", timeout=15_000)
    await expect(bubble.locator(".thinking")).to_have_text("end")
    assert await bubble.locator(".answer").evaluate("a => a.textContent.length") == 2000 * 3001
    assert slowest < 3.0, f"the page did not answer for {slowest:.1f} s"
    assert ui.js_errors == []


# What a script from elsewhere, running on this origin, reports: the API docs load Swagger UI from a CDN,
# without pinning it. Every storage the page could have left the key in.
SNOOP = """window.__found = JSON.stringify({
  local: Object.fromEntries(Object.entries(localStorage)),
  session: Object.fromEntries(Object.entries(sessionStorage)),
  cookies: document.cookie, url: location.href, name: window.name });"""


async def test_the_api_key_is_not_left_for_other_pages_of_the_origin(ui: UI) -> None:
    """The UI kept the key in localStorage: any page of the origin could read it, for ever after, and
    /docs ran a CDN's script (swagger-ui-dist@5, unpinned). A compromised CDN took every tenant admin's
    key that ever used the UI in that browser. The key stays in the page's memory only; and since session
    8 /docs loads nothing from anywhere but the node (app/docs.py). Whatever script runs on another page
    of the origin finds no key."""
    page = ui.page
    context = page.context
    elsewhere: list[str] = []

    async def offsite(route) -> None:  # type: ignore[no-untyped-def]
        elsewhere.append(route.request.url)
        await route.abort()  # no test reaches the internet

    await context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/]).*"), offsite)
    key = await connected(ui)
    bubble = await say(ui, "echo", "hello")
    await expect(bubble.locator(".meta")).to_have_text("done")
    docs = await context.new_page()  # another tab of the same browser, same origin
    refused: list[str] = []  # what the docs' Content-Security-Policy had to block (nothing: it needs none of it)
    docs.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    await docs.goto(ui.node.base_url + "/docs")
    await expect(docs.locator(".opblock").first).to_be_visible(timeout=20_000)  # Swagger UI rendered the API
    await docs.evaluate(SNOOP)  # what any script of the origin could read
    found = await docs.evaluate("window.__found")
    assert key not in found, found
    await page.goto(ui.node.base_url + "/docs")  # the same tab, navigated away from the UI
    await expect(page.locator(".opblock").first).to_be_visible(timeout=20_000)
    await page.evaluate(SNOOP)
    found = await page.evaluate("window.__found")
    assert key not in found, found
    assert elsewhere == [], elsewhere  # /docs asked no other host for anything
    assert refused == [], refused
    # back in the UI: it asks for the key again
    await page.goto(ui.node.base_url + "/ui/")
    await expect(page.locator("#api-key")).to_have_value("")
    await expect(page.locator("#whoami")).to_have_text("")
