"""What a user walkthrough of the web UI found, each in a real Chromium against a real node.

A dropped event stream ended the answer (only a cleanly ended body reconnected); a shadowed platform
bundle was offered next to the tenant's; "New conversation" left Send disabled while the run it hid went
on; long words overflowed the bubbles and the side bar; the budget lines ran together and named no
account; a viewer key was offered Approve / Reject; a revoked key kept the header "connected" and the side
bar polling for ever.

Connections are cut for real: the page's first events request is sent (page.route) to a small server of
the test's that relays the node's own stream and resets the connection after a chosen frame, which the
page sees as net::ERR_INCOMPLETE_CHUNKED_ENCODING, as when a server restarts mid-stream; refused
reconnections are page.route aborts. One test restarts the API for real (its connections reset, its port
closed, a new node on the same data directory).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture fails (make test) or skips with the reason
    expect = None  # type: ignore[assignment]

from tests.e2e.harness import Node, collect, make_data_dir, settings_for, start_node
from tests.ui.conftest import UI
from tests.ui.test_attack_ui_session7 import open_bundle
from tests.ui.test_hostile_content import upload
from tests.ui.test_web_ui import APPROVAL_POLICY, RECORD_ANSWERS, connected, put_policy, say

pytestmark = pytest.mark.timeout(90)

EVENTS = "**/v1/runs/*/events"
WAITING = "‖ waiting for approval of echo: a human checks every echo"

# Two words, a call that waits for a human (APPROVAL_POLICY), two more words.
GATED = """
async def main(ctx):
    await ctx.answer("one ")
    await ctx.answer("two ")
    await ctx.call("echo", n=1)
    await ctx.answer("three ")
    await ctx.answer("four ")
"""


class Cutter:
    """Relays the node's real event stream (same path, key and Last-Event-ID) as a chunked body, and resets
    the connection right after the first frame that contains ``mark``: the body ends mid-stream."""

    def __init__(self, node: Node, page: Any, mark: bytes = b"event: approval.requested") -> None:
        self.node, self.page, self.mark = node, page, mark
        self.cut = asyncio.Event()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Cutter:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            forward = {k: fields[k] for k in ("authorization", "last-event-id") if k in fields}
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            seen = b""
            async with httpx.AsyncClient(base_url=self.node.base_url, timeout=30) as c, \
                    c.stream("GET", path, headers=forward) as r:
                async for chunk in r.aiter_raw():
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                    seen += chunk
                    at = seen.find(self.mark)
                    if at >= 0 and seen.find(b"\n\n", at) >= 0:  # the whole frame went out
                        # and the page has read it: a reset discards what its peer has not read yet (CI once
                        # lost the approval.requested frame, and the page resumed one event earlier)
                        await expect(self.page.locator(".tool").first).to_contain_text("waiting for approval",
                                                                                      timeout=20_000)
                        break
        finally:
            writer.transport.abort()  # a reset, no terminating chunk: the body is cut off
            self.cut.set()


Handler = Callable[[Any, int], Awaitable[None]]


async def route_events(ui: UI, cutter: Cutter, later: Handler) -> list[dict[str, str]]:
    """The page's first events request goes to ``cutter``; the n-th after it to ``later(route, n)``.
    Returns the headers of every events request, in order."""
    seen: list[dict[str, str]] = []

    async def handle(route: Any) -> None:
        seen.append(await route.request.all_headers())
        if len(seen) == 1:
            url = urlsplit(route.request.url)
            await route.continue_(url=cutter.url + url.path + (f"?{url.query}" if url.query else ""))
        else:
            await later(route, len(seen) - 1)

    await ui.page.route(EVENTS, handle)
    return seen


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Waits, boundedly, for something the page does in its own time (its backoff)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def gated(ui: UI) -> str:
    key = await connected(ui)
    await put_policy(ui, key, APPROVAL_POLICY)
    await upload(ui, key, "gated", GATED)
    await open_bundle(ui, "gated")
    return key


async def decide(ui: UI, key: str, decision: str) -> None:
    await decide_on(ui.node.client(key), decision)


async def decide_on(c: httpx.AsyncClient, decision: str) -> None:
    [pending] = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
    r = await c.post(f"/v1/approvals/{pending['id']}/decision", json={"decision": decision})
    assert r.status_code == 200, r.text


def network_noise(ui: UI) -> list[str]:
    """Console errors other than the failed loads the test causes on purpose."""
    return [m for m in ui.console_errors if "net::ERR_" not in m]


async def test_a_stream_cut_mid_body_resumes_with_last_event_id(ui: UI) -> None:
    """The body of the events stream ends in a connection reset after "one two " and the approval request.
    The UI threw the network error out of its loop: the answer stopped there, for good. Now it says
    "reconnecting…", keeps the bubble, asks again with Last-Event-ID = the last id it saw, and shows the
    rest of the answer exactly once."""
    key = await gated(ui)
    page = ui.page
    held, go_on = asyncio.Event(), asyncio.Event()

    async def later(route: Any, n: int) -> None:
        held.set()
        await go_on.wait()  # the reconnection waits until the test has seen the page while it is cut off
        await route.continue_()

    async with Cutter(ui.node, ui.page) as cutter:
        seen = await route_events(ui, cutter, later)
        await page.evaluate(RECORD_ANSWERS)
        bubble = await say(ui, "gated", "go")
        await asyncio.wait_for(cutter.cut.wait(), 20)
        await expect(bubble.locator(".answer")).to_have_text("one two ")
        await expect(bubble.locator(".conn")).to_have_text("reconnecting…")
        await expect(bubble.locator(".conn")).to_be_visible()
        await asyncio.wait_for(held.wait(), 20)
        await expect(page.locator("#send")).to_be_disabled()  # still following the run
        await expect(page.locator("#error")).to_have_text("")
        go_on.set()
        await expect(bubble.locator(".conn")).to_be_hidden()
        await decide(ui, key, "approve")
        await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".answer")).to_have_text("one two three four ")
    assert await page.evaluate("window.__answers") == ["one ", "one two ", "one two three ", "one two three four "]
    await expect(bubble.locator(".tool")).to_have_text([WAITING, "▶ approval approved", "⚙ echo → allow $0.001000"])
    run_id = await bubble.get_attribute("data-run")
    asked = [e.id for e in await collect(ui.node.client(key), run_id) if e.event == "approval.requested"]
    assert [h.get("last-event-id") for h in seen] == ["0", str(asked[0])], seen
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#error")).to_have_text("")
    assert ui.js_errors == [] and network_noise(ui) == []


async def test_a_server_that_is_down_is_retried_with_backoff_until_the_outcome(ui: UI) -> None:
    """After the cut, every reconnection is refused (the server is down) while the run fails elsewhere (its
    approval is rejected). The UI retries with a growing pause, not in a tight loop, and shows the run's
    end ("failed", with the rejected call) once the server answers again."""
    key = await gated(ui)
    page = ui.page
    down = True
    refused: list[float] = []

    async def later(route: Any, n: int) -> None:
        if down:
            refused.append(time.monotonic())
            await route.abort("connectionrefused")
        else:
            await route.continue_()

    async with Cutter(ui.node, ui.page) as cutter:
        await route_events(ui, cutter, later)
        bubble = await say(ui, "gated", "go")
        await asyncio.wait_for(cutter.cut.wait(), 20)
        await until(lambda: len(refused) >= 3)
        await expect(bubble.locator(".conn")).to_have_text("reconnecting…")
        await expect(bubble.locator(".answer")).to_have_text("one two ")
        await decide(ui, key, "reject")  # the run ends while the page cannot reach the server
        down = False
        await expect(bubble.locator(".meta")).to_have_class("meta status-failed", timeout=20_000)
    gaps = [b - a for a, b in zip(refused, refused[1:], strict=False)]
    assert gaps[0] >= 0.8 and gaps[1] >= 1.6, gaps  # 0.5 s, then doubling (after the first refused one: 1 s, 2 s)
    await expect(bubble.locator(".meta")).to_contain_text("failed")
    await expect(bubble.locator(".tool.denied")).to_have_text("⚙ echo → approval.rejected")
    await expect(bubble.locator(".conn")).to_be_hidden()
    await expect(bubble.locator(".answer")).to_have_text("one two ")
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#error")).to_have_text("")
    assert ui.js_errors == [] and network_noise(ui) == []


@pytest.mark.timeout(120)
async def test_an_api_restart_mid_run_is_ridden_out(browser: Any) -> None:
    """A real restart of the API the page talks to, while its run waits for approval on a worker that carries
    on: the HTTP server stops (the stream drops, then every connection is refused), the approval is given and
    the run ends while it is down, then an API node on the same data directory answers at the old address.
    The page kept retrying and shows the rest of the answer, once."""
    data_dir = make_data_dir()
    first = await start_node(settings_for("embedded", data_dir))  # the API, and the worker that runs the run
    second = None
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(20_000)
    try:
        view = UI(node=first, page=await ctx.new_page())
        view.page.on("pageerror", lambda exc: view.js_errors.append(str(exc)))
        key = await gated(view)
        bubble = await say(view, "gated", "go")
        await expect(bubble.locator(".tool")).to_have_text([WAITING])
        # the HTTP server only goes down, as a killed process would: no new connections, open ones reset;
        # the runtime and its worker go on
        first.server.should_exit = True
        for conn in list(first.server.server_state.connections):
            conn.transport.abort()
        await asyncio.wait_for(first.task, 10)
        await expect(bubble.locator(".conn")).to_be_visible()
        second = await start_node(settings_for("embedded", data_dir), workers=False)
        c = second.client(key)
        await decide_on(c, "approve")
        await until_status(c, await bubble.get_attribute("data-run"), "succeeded")
        await expect(bubble.locator(".conn")).to_be_visible()  # still cut off: nothing answers at the old address
        target = second.base_url

        async def to_second(route: Any) -> None:  # the API is back at the address the page knows
            await route.continue_(url=target + route.request.url[len(first.base_url):])

        await view.page.route(first.base_url + "/**", to_second)
        await expect(bubble.locator(".meta")).to_have_text("done", timeout=30_000)
        await expect(bubble.locator(".answer")).to_have_text("one two three four ")
        await expect(bubble.locator(".tool")).to_have_text([WAITING, "▶ approval approved", "⚙ echo → allow $0.001000"])
        await expect(bubble.locator(".conn")).to_be_hidden()
        await expect(view.page.locator("#send")).to_be_enabled()
        await expect(view.page.locator("#error")).to_have_text("")
        assert view.js_errors == []
    finally:
        await ctx.close()
        if second is not None:
            await second.stop()
        await first.stop()


async def test_cancel_while_cut_off_ends_the_retries(ui: UI) -> None:
    """Cancel while every reconnection is refused: the run is canceled (the API answers; only the stream is
    cut off), the page stops retrying at once and shows the run canceled, without waiting for the stream."""
    key = await gated(ui)
    page = ui.page
    refused: list[float] = []

    async def later(route: Any, n: int) -> None:
        refused.append(time.monotonic())
        await route.abort("connectionrefused")

    async with Cutter(ui.node, ui.page) as cutter:
        await route_events(ui, cutter, later)
        bubble = await say(ui, "gated", "go")
        await until(lambda: len(refused) >= 2)
        await page.click("#cancel")
        await expect(bubble.locator(".meta")).to_have_text("canceled: canceled by the client")
    await expect(bubble.locator(".meta")).to_have_class("meta status-canceled")
    await expect(bubble.locator(".conn")).to_be_hidden()
    await expect(page.locator("#send")).to_be_enabled()  # the stream's loop has ended: no more retries
    await expect(page.locator("#cancel")).to_be_disabled()
    await expect(page.locator("#error")).to_have_text("")
    run = (await ui.node.client(key).get(f"/v1/runs/{await bubble.get_attribute('data-run')}")).json()
    assert run["status"] == "canceled"
    assert ui.js_errors == [] and network_noise(ui) == []


async def test_a_rejected_key_ends_the_retries_with_the_error(ui: UI) -> None:
    """401 on a reconnection (the key was revoked while the stream was down) is not retried: the error
    shows, the header says the key was rejected, Send is back."""
    admin_key, page = await gated(ui), ui.page
    c = ui.node.client(admin_key)
    made = (await c.post("/v1/keys", json={"role": "admin"})).json()
    await ui.connect(made["api_key"])  # the page now uses a key the test can revoke
    # connected, not just clicked: a connect still under way rebuilt the picker (back to its default bundle)
    # after the message below was typed, and the run that started was not the gated one
    await expect(page.locator("#whoami")).to_have_text("connected as admin")
    await expect(page.locator("#bundle option[value=gated]")).to_have_count(1)
    held, go_on = asyncio.Event(), asyncio.Event()

    async def later(route: Any, n: int) -> None:
        held.set()
        await go_on.wait()
        await route.continue_()

    async with Cutter(ui.node, ui.page) as cutter:
        seen = await route_events(ui, cutter, later)
        bubble = await say(ui, "gated", "go")
        await asyncio.wait_for(held.wait(), 20)
        assert (await c.delete(f"/v1/keys/{made['id']}")).status_code == 200
        go_on.set()
        await expect(page.locator("#error")).to_contain_text("auth.invalid")
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#cancel")).to_be_disabled()
    await expect(bubble.locator(".conn")).to_be_hidden()
    await expect(page.locator("#whoami")).to_have_text("disconnected — key rejected")
    assert len(seen) == 2, seen
    assert ui.js_errors == []


async def test_a_shadowed_platform_bundle_is_not_offered(ui: UI) -> None:
    """A tenant "echo" shadows the platform's: the picker offered "echo (tenant)" and "echo" (both ran the
    tenant's). Only the tenant's is offered now, with its own description."""
    key = await connected(ui)
    await upload(ui, key, "echo", "async def main(ctx):\n    await ctx.answer('mine')\n", description="the tenant's echo")
    await open_bundle(ui, "echo")
    page = ui.page
    # the platform's "echo" was in the picker before the reconnect, so open_bundle may return before the
    # list is reloaded: wait until the one "echo" option is the tenant's (auto-retrying, no sleep)
    await expect(page.locator("#bundle option[value='echo']")).to_have_text(["echo (tenant)"])
    labels = await page.locator("#bundle option").evaluate_all("os => os.map(o => [o.value, o.textContent])")
    assert [x for x in labels if x[0] == "echo"] == [["echo", "echo (tenant)"]], labels
    assert "hello-tools" in [x[0] for x in labels]  # platform bundles nobody shadows are still there
    await page.select_option("#bundle", "echo")
    await expect(page.locator("#bundle-desc")).to_have_text("the tenant's echo")
    bubble = await say(ui, "echo", "x")
    await expect(bubble.locator(".answer")).to_have_text("mine")
    assert ui.js_errors == [] and ui.console_errors == []


async def test_new_conversation_stops_following_the_run(ui: UI) -> None:
    """"New conversation" while a run waited for approval emptied the pane but left Send disabled (and
    Cancel enabled) until that hidden run ended. Now it stops following the run - which goes on on the
    server, its approval still in the side bar - and the next message can go out at once."""
    key = await gated(ui)
    page = ui.page
    old = await say(ui, "gated", "go")
    await expect(old.locator(".tool")).to_have_text([WAITING])
    old_run = await old.get_attribute("data-run")
    await page.click("#new-chat")
    await expect(page.locator(".msg")).to_have_count(0)
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#cancel")).to_be_disabled()
    await page.select_option("#bundle", "echo")
    fresh = await say(ui, "echo", "fresh start")
    await expect(fresh.locator(".meta")).to_have_text("done")
    await expect(page.locator(".msg.assistant")).to_have_count(1)
    c = ui.node.client(key)
    assert (await c.get(f"/v1/runs/{old_run}")).json()["status"] == "waiting_approval"
    await expect(page.locator("#approvals li")).to_have_count(1)  # still there to decide
    await expect(page.locator("#error")).to_have_text("")
    await decide(ui, key, "approve")  # the old run ends on the server; nothing of it comes back to the pane
    await until_status(c, old_run, "succeeded")
    await expect(page.locator(".msg.assistant")).to_have_count(1)
    await expect(page.locator(".msg .answer")).to_have_text("fresh start ")
    assert ui.js_errors == [] and ui.console_errors == []


async def until_status(c: httpx.AsyncClient, run_id: str, status: str) -> None:
    events = await asyncio.wait_for(collect(c, run_id), 20)  # the stream closes after the terminal event
    assert events[-1].event.startswith("run.")
    assert (await c.get(f"/v1/runs/{run_id}")).json()["status"] == status


LONG_WORD = "W" * 3000
LONG = f"""
W = {LONG_WORD!r}


async def main(ctx):
    await ctx.thinking(W)
    await ctx.answer(W)
    await ctx.status(W)
    await ctx.citation(W, title=W, source=W)
    await ctx.followups([W])
    await ctx.call("echo", w=W)
"""


async def test_long_words_wrap_inside_bubbles_and_the_side_bar(ui: UI) -> None:
    """One unbroken word of up to 3,000 characters in a bundle description, an approval's reason and every part
    of an answer: it overflowed its bubble and widened the side bar (which scrolled sideways). Every box
    keeps it inside now."""
    key = await connected(ui)
    await put_policy(ui, key, APPROVAL_POLICY.replace("a human checks every echo", LONG_WORD[:500]))  # its limit
    await upload(ui, key, "long", LONG, description=LONG_WORD[:2000])  # its limit
    await open_bundle(ui, "long")
    page = ui.page
    await page.select_option("#bundle", "long")
    await expect(page.locator("#bundle-desc")).to_have_text(LONG_WORD[:2000])
    bubble = await say(ui, "long", LONG_WORD)
    await expect(page.locator("#approvals li")).to_have_count(1)
    await expect(bubble.locator(".meta")).to_have_text(LONG_WORD)
    await expect(bubble.locator(".followups button")).to_have_count(1)
    overflowing = await page.evaluate("""() => [...document.querySelectorAll(
        "aside, aside *, #messages, .msg, .msg *")].filter((e) => e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0)
        .map((e) => e.tagName + "." + e.className + "#" + e.id + " " + e.scrollWidth + ">" + e.clientWidth)""")
    assert overflowing == [], overflowing
    for sel in ("aside", ".msg.user", ".msg.assistant"):  # and nothing sticks out of its box
        box, inner = await page.locator(sel).bounding_box(), await page.locator(sel).evaluate(
            "e => Math.max(...[...e.querySelectorAll('*')].map((x) => x.getBoundingClientRect().right))")
        assert box is not None and inner <= box["x"] + box["width"] + 1, (sel, box, inner)
    assert ui.js_errors == []


async def test_budget_lines_name_their_accounts(ui: UI) -> None:
    """The budget panel ran its lines together (a "\\n" in a box that collapses it) and said only "user:"
    or "tenant:". One line per account now, naming it."""
    key = await connected(ui)
    c = ui.node.client(key)
    user = (await c.post("/v1/users", json={"name": "alice"})).json()["id"]
    r = await c.put("/v1/budgets", json={"budgets": [{"scope": "tenant", "cap_usd": 5},
                                                     {"scope": "user", "scope_id": user, "cap_usd": 1}]})
    assert r.status_code == 200, r.text
    tenant = [a["scope_id"] for a in r.json()["data"] if a["scope"] == "tenant"][0]
    page = ui.page
    await page.click("#key-save")  # the side bar loads again
    lines = page.locator("#budget .account")
    expected = {"tenant": f"tenant {tenant}: $0.0000 of $5.00", "user": f"user {user}: $0.0000 of $1.00"}
    await expect(lines).to_have_text([expected[a["scope"]] for a in r.json()["data"]])  # in the API's order
    first, second = [await lines.nth(i).bounding_box() for i in (0, 1)]
    assert first and second and second["y"] >= first["y"] + first["height"] - 1  # one below the other
    assert ui.js_errors == [] and ui.console_errors == []


async def test_a_viewer_key_cannot_press_approve(ui: UI) -> None:
    """A viewer's Approve / Reject only ever got auth.forbidden, and came back enabled to be pressed again.
    The page asks GET /v1/me at connect: a key that may not decide never has them enabled, with a note."""
    admin = await connected(ui)
    await put_policy(ui, admin, APPROVAL_POLICY)
    c = ui.node.client(admin)
    viewer = (await c.post("/v1/keys", json={"role": "viewer"})).json()["api_key"]
    page = ui.page
    await ui.connect(viewer)
    run = (await c.post("/v1/runs", json={"bundle": "hello-tools", "input": "hi"})).json()
    pending = page.locator("#approvals li")
    await expect(pending).to_have_count(1)
    await expect(page.locator("#whoami")).to_have_text("connected as viewer")
    await page.wait_for_timeout(800)  # past the buttons' arming delay (ARM_MS): they stay disabled
    for name in ("Approve", "Reject"):
        await expect(pending.get_by_role("button", name=name)).to_be_disabled()
    await expect(page.locator("#approval-note")).to_have_text(
        "This key cannot decide approvals: that needs an admin or approver key.")
    await expect(page.locator("#approval-note")).to_be_visible()
    await c.post("/v1/runs", json={"bundle": "hello-tools", "input": "again"})  # a second request comes in
    await expect(pending).to_have_count(2)
    await expect(page.locator("#approvals li button")).to_have_count(4)
    for b in await page.locator("#approvals li button").all():
        await expect(b).to_be_disabled()
    # the refusal changed nothing; a key that may decide gets its buttons back
    assert [a["run_id"] for a in (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
            ][-1] == run["id"]
    await ui.connect(admin)
    await expect(page.locator("#approval-note")).to_be_hidden()
    await expect(pending.first.get_by_role("button", name="Approve")).to_be_enabled()
    assert ui.js_errors == []


# Every fetch() the page makes, by path, counted as it is called.
COUNT_FETCHES = """(() => {
  const real = window.fetch;
  window.__fetches = [];
  window.fetch = function (input, init) { window.__fetches.push(String(input)); return real.apply(this, arguments); };
})();"""


async def test_a_revoked_key_disconnects_and_stops_polling(ui: UI) -> None:
    """Once its key was revoked, the page kept saying "connected" and asked for approvals and budgets every
    3 s for ever (401 each). It says "disconnected — key rejected" now and stops asking. The page's clock
    is Playwright's, run forward: a minute of polling in no time."""
    page = ui.page
    await page.add_init_script(COUNT_FETCHES)
    await page.clock.install()
    admin = await connected(ui)
    c = ui.node.client(admin)
    made = (await c.post("/v1/keys", json={"role": "admin"})).json()
    await ui.connect(made["api_key"])
    await expect(page.locator("#whoami")).to_have_text(re.compile(r"^connected as "))
    await page.clock.run_for(3_100)  # a poll with the key still good
    await until_fetched(page, "/v1/budgets", 3)  # connect, connect again, the poll
    assert (await c.delete(f"/v1/keys/{made['id']}")).status_code == 200
    await page.clock.run_for(3_100)
    await expect(page.locator("#whoami")).to_have_text("disconnected — key rejected")
    asked = await page.evaluate("window.__fetches.length")
    await page.clock.run_for(60_000)
    assert await page.evaluate("window.__fetches.length") == asked, await page.evaluate("window.__fetches.slice(-5)")
    # a good key connects again, and the polling with it
    await ui.connect(admin)
    await expect(page.locator("#whoami")).to_have_text(re.compile(r"^connected as "))
    before = await page.evaluate("window.__fetches.filter((u) => u.includes('/v1/approvals')).length")
    await page.clock.run_for(3_100)
    await until_fetched(page, "/v1/approvals", before + 1)
    assert ui.js_errors == []


async def until_fetched(page: Any, path: str, n: int) -> None:
    await page.wait_for_function(
        "([p, n]) => window.__fetches.filter((u) => u.includes(p)).length >= n", arg=[path, n], timeout=10_000)

