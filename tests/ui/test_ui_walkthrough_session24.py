"""A user's walkthrough of the web UI (session 24), in a real Chromium against a real node: the mouse on Send and
Cancel.

Send clicked with the mouse left the focus on the button, which is disabled while the run goes on: the focus fell
to the page's body, so the next message could not be typed without clicking the box again (and a keyboard user
was sent back to the top of the page). A double click on Cancel asked the node to cancel twice: the second
answer, run.not_cancelable ("already ended (canceled)"), showed as an error under a run canceled as asked.
"""

from __future__ import annotations

from typing import Any

import pytest

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture fails (make test) or skips with the reason
    expect = None  # type: ignore[assignment]

from tests.ui.conftest import UI
from tests.ui.test_walkthrough_fixes import WAITING, decide, gated, until

pytestmark = pytest.mark.timeout(120)

FOCUSED = "document.activeElement && document.activeElement.id"


async def test_send_clicked_with_the_mouse_leaves_the_focus_in_the_message_box(ui: UI) -> None:
    """The focus stays in the message box through the run, so the next message is typed straight away."""
    key = await gated(ui)
    page = ui.page
    await page.select_option("#bundle", "gated")
    await page.fill("#input", "go")
    await page.click("#send")
    bubble = page.locator(".msg.assistant").nth(0)
    await expect(bubble.locator(".tool")).to_have_text([WAITING])
    await expect(page.locator("#send")).to_be_disabled()
    assert await page.evaluate(FOCUSED) == "input"
    await decide(ui, key, "approve")
    await expect(bubble.locator(".meta")).to_have_text("done")
    await page.keyboard.type("next")  # no click on the box first
    await expect(page.locator("#input")).to_have_value("next")
    assert ui.js_errors == []


async def test_a_double_click_on_cancel_cancels_once_without_an_error(ui: UI) -> None:
    """One cancel request per run: the bubble ends canceled, no error shows, Send is back."""
    await gated(ui)
    page = ui.page
    cancels: list[str] = []
    answered: list[str] = []
    page.on("request", lambda r: cancels.append(r.url) if r.url.endswith("/cancel") else None)
    page.on("requestfinished", lambda r: answered.append(r.url) if r.url.endswith("/cancel") else None)
    await page.select_option("#bundle", "gated")
    await page.fill("#input", "go")
    await page.press("#input", "Enter")
    bubble = page.locator(".msg.assistant").nth(0)
    await expect(bubble.locator(".tool")).to_have_text([WAITING])
    await page.dblclick("#cancel")
    await expect(bubble.locator(".meta")).to_have_class("meta status-canceled")
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#cancel")).to_be_disabled()
    await until(lambda: len(answered) == len(cancels))  # every cancel asked for has its answer
    await expect(page.locator("#error")).to_have_text("")
    assert len(cancels) == 1, cancels
    assert ui.js_errors == []


async def test_a_refused_cancel_can_be_pressed_again(ui: UI) -> None:
    """A cancel the node refuses (here a 503 from a proxy) shows its error and leaves Cancel enabled: the next
    press cancels the run."""
    await gated(ui)
    page = ui.page
    refused: list[str] = []

    async def once(route: Any) -> None:
        if refused:
            await route.continue_()
            return
        refused.append(route.request.url)
        await route.fulfill(status=503, content_type="application/problem+json",
                            body='{"code": "server.unavailable", "detail": "try again"}')

    await page.route("**/v1/runs/*/cancel", once)
    await page.select_option("#bundle", "gated")
    await page.fill("#input", "go")
    await page.press("#input", "Enter")
    bubble = page.locator(".msg.assistant").nth(0)
    await expect(bubble.locator(".tool")).to_have_text([WAITING])
    await page.click("#cancel")
    await expect(page.locator("#error")).to_have_text("server.unavailable: try again")
    await expect(page.locator("#cancel")).to_be_enabled()
    await page.click("#cancel")
    await expect(bubble.locator(".meta")).to_have_class("meta status-canceled")
    await expect(page.locator("#cancel")).to_be_disabled()
    assert ui.js_errors == []
