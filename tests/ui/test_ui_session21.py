"""How the answer bubble ends when the stream ends other than with the run's end, in a real Chromium against a
real node: the key revoked while the answer streams (the node cuts the stream at its next key re-check), the run
canceled from another tab, the node draining its streams for a restart; and the UI's files as ES modules.

A revoked key left the bubble as it was mid-stream - no end, no word of why - while only the error line and the
header said the key was refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture fails (make test) or skips with the reason
    expect = None  # type: ignore[assignment]

import app.deps
from tests.e2e.harness import collect
from tests.ui.conftest import UI
from tests.ui.test_hostile_content import watched
from tests.ui.test_walkthrough_fixes import COUNT_FETCHES, EVENTS, WAITING, decide, gated, until
from tests.ui.test_web_ui import RECORD_ANSWERS, connected, say

pytestmark = pytest.mark.timeout(90)


async def own_key(ui: UI, admin_key: str, role: str = "admin") -> dict[str, Any]:
    """A second key of the tenant, the page connected with it (so the test can revoke it)."""
    made = (await ui.node.client(admin_key).post("/v1/keys", json={"role": role})).json()
    await ui.connect(made["api_key"])
    # connected, not just clicked: a connect still under way rebuilds the picker after the message is typed
    await expect(ui.page.locator("#whoami")).to_have_text(f"connected as {role}")
    await expect(ui.page.locator("#bundle option[value=gated]")).to_have_count(1)
    return made


async def test_a_key_revoked_mid_stream_ends_the_bubble(ui: UI, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is revoked while its run's answer streams: the node closes the open stream at its next key
    re-check, the page's reconnection gets 401. The bubble stayed as it was mid-answer, for good; now it ends,
    saying the key no longer works, the header shows the key rejected, and nothing is asked with the key again."""
    monkeypatch.setattr(app.deps, "KEY_RECHECK_S", 0.5)  # the node re-checks an open stream's key this often
    page = ui.page
    await page.add_init_script(COUNT_FETCHES)
    await page.clock.install()  # time flows; run forward at the end: a minute of (no) retries in no time
    admin_key = await gated(ui)
    made = await own_key(ui, admin_key)
    bubble = await say(ui, "gated", "go")
    await expect(bubble.locator(".tool")).to_have_text([WAITING])  # the stream is open, the run waits
    await expect(bubble.locator(".answer")).to_have_text("one two ")
    assert (await ui.node.client(admin_key).delete(f"/v1/keys/{made['id']}")).status_code == 200
    await expect(bubble.locator(".meta")).to_have_text("interrupted: this key no longer works (auth.invalid)")
    await expect(bubble.locator(".meta")).to_have_class("meta status-interrupted")
    await expect(bubble.locator(".conn")).to_be_hidden()
    await expect(bubble.locator(".answer")).to_have_text("one two ")
    await expect(page.locator("#whoami")).to_have_text("disconnected — key rejected")
    await expect(page.locator("#error")).to_contain_text("auth.invalid")
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#cancel")).to_be_disabled()
    asked = await page.evaluate("window.__fetches.length")
    await page.clock.run_for(60_000)
    assert await page.evaluate("window.__fetches.length") == asked, await page.evaluate("window.__fetches.slice(-5)")
    # the run itself goes on on the server (a run outlives its client): another key sees it waiting
    run = (await ui.node.client(admin_key).get(f"/v1/runs/{await bubble.get_attribute('data-run')}")).json()
    assert run["status"] == "waiting_approval", run
    assert ui.js_errors == []


async def test_a_run_canceled_from_another_tab_ends_the_bubble(ui: UI) -> None:
    """Cancel from elsewhere (another tab, the API): the stream delivers run.canceled and the bubble ends with
    it; the page stays connected and Send is back."""
    key = await gated(ui)
    page = ui.page
    bubble = await say(ui, "gated", "go")
    await expect(bubble.locator(".tool")).to_have_text([WAITING])
    run_id = await bubble.get_attribute("data-run")
    assert (await ui.node.client(key).post(f"/v1/runs/{run_id}/cancel")).status_code == 200
    await expect(bubble.locator(".meta")).to_have_class("meta status-canceled")
    await expect(bubble.locator(".meta")).to_contain_text("canceled")
    await expect(bubble.locator(".conn")).to_be_hidden()
    await expect(bubble.locator(".answer")).to_have_text("one two ")
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#cancel")).to_be_disabled()
    await expect(page.locator("#whoami")).to_have_text(re.compile(r"^connected as "))
    await expect(page.locator("#error")).to_have_text("")
    assert ui.js_errors == []


async def test_a_draining_node_closes_the_stream_and_the_page_resumes_once(ui: UI) -> None:
    """A node stopping for a restart ends its streams cleanly (a comment, then the end of the body). The page
    asks again with Last-Event-ID = the last event it showed and shows the rest of the answer exactly once."""
    key = await gated(ui)
    page = ui.page
    slots = ui.node.rt.stream_slots
    seen: list[dict[str, str]] = []

    async def handle(route: Any) -> None:
        seen.append(await route.request.all_headers())
        if len(seen) > 1:
            slots.draining = False  # the restarted node: its streams stay open
        await route.continue_()

    await page.route(EVENTS, handle)
    await page.evaluate(RECORD_ANSWERS)
    bubble = await say(ui, "gated", "go")
    await expect(bubble.locator(".tool")).to_have_text([WAITING])
    slots.drain()
    await until(lambda: len(seen) > 1)  # the page's reconnection, after its 0.5 s pause
    await decide(ui, key, "approve")
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".answer")).to_have_text("one two three four ")
    assert await page.evaluate("window.__answers") == ["one ", "one two ", "one two three ", "one two three four "]
    await expect(bubble.locator(".tool")).to_have_text([WAITING, "▶ approval approved", "⚙ echo → allow $0.001000"])
    asked = [e.id for e in await collect(ui.node.client(key), await bubble.get_attribute("data-run"))
             if e.event == "approval.requested"]
    assert [h.get("last-event-id") for h in seen] == ["0", str(asked[0])], seen
    await expect(page.locator("#error")).to_have_text("")
    assert ui.js_errors == []


UI_DIR = Path(__file__).resolve().parents[2] / "ui"


async def test_the_ui_loads_as_small_es_modules(ui: UI) -> None:
    """app.js is the entry module (type=module) of small modules, one per concern, all served from ui/ with a
    JavaScript type under the UI's CSP; the page works with them (connects, no error, no CSP report)."""
    modules = sorted(p.name for p in UI_DIR.glob("*.js"))
    assert "app.js" in modules and len(modules) > 5, modules
    for name in modules:
        lines = (UI_DIR / name).read_text().count("\n")
        assert lines < 250, (name, lines)
    c = ui.node.client()
    index = (await c.get("/ui/")).text
    assert '<script type="module" src="/ui/app.js">' in index
    for name in modules:
        r = await c.get(f"/ui/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith("text/javascript"), (name, r.headers["content-type"])
        assert "script-src 'self';" in r.headers["content-security-policy"]
    loaded: list[str] = []
    ui.page.on("response", lambda r: loaded.append(r.url.rsplit("/", 1)[-1]) if r.url.endswith(".js") else None)
    await watched(ui)
    await connected(ui)
    assert sorted(set(loaded)) == modules, loaded  # every module is used, none is missing
    assert await ui.page.evaluate("window.__csp") == []
    assert ui.js_errors == [] and ui.console_errors == []
