"""A real Stockade node and a real Chromium (Debian's, driven by Playwright) in the test's event loop.

The browser only ever loads the node on 127.0.0.1; the flags below keep
Chromium from phoning home. ``make test`` installs Chromium
(deployment/bin/ensure-browser); without it these tests fail under
STOCKADE_REQUIRE_SERVICES=1 and skip elsewhere, like the database tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Node, make_data_dir, settings_for, start_node

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run"]
REQUIRE = os.environ.get("STOCKADE_REQUIRE_SERVICES") == "1"


def chromium_path() -> Path | None:
    for name in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(name).exists():
            return Path(name)
    found = shutil.which("chromium")
    return Path(found) if found else None


def _need(ok: bool, msg: str) -> None:
    if ok:
        return
    if REQUIRE:
        pytest.fail(msg + " (make test installs it; see deployment/bin/ensure-browser)", pytrace=False)
    pytest.skip(msg)


@dataclass
class UI:
    """One browser page on the node's /ui/, plus the JavaScript errors it raised."""

    node: Node
    page: Any  # playwright.async_api.Page
    js_errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page
    console_errors: list[str] = field(default_factory=list)  # includes "failed to load resource" of 4xx answers

    async def open(self, key: str | None = None) -> None:
        await self.page.goto(self.node.base_url + "/ui/")
        if key is not None:
            await self.connect(key)

    async def connect(self, key: str) -> None:
        await self.page.fill("#api-key", key)
        await self.page.click("#key-save")


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    n = await start_node(settings_for("embedded", make_data_dir()))
    try:
        yield n
    finally:
        await n.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _need(False, "the playwright package is not installed (pip install -e '.[dev]')")
    exe = chromium_path()
    _need(exe is not None, "Chromium is not installed (apt-get install chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(exe), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def ui(node: Node, browser: Any) -> AsyncIterator[UI]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(20_000)
    page = await ctx.new_page()
    view = UI(node=node, page=page)
    page.on("pageerror", lambda exc: view.js_errors.append(str(exc)))
    page.on("console", lambda msg: view.console_errors.append(msg.text) if msg.type == "error" else None)
    try:
        yield view
    finally:
        await ctx.close()
