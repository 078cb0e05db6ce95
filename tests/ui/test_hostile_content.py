"""The web UI against hostile content: whatever a tenant, a bundle, a tool or an LLM controls is shown as text.

Payloads go in through the real system (an uploaded bundle that emits them, a policy that turns a
call with hostile arguments into an approval, API errors, the page's own URL) and the page must
run none of them: ``window.__xss`` stays unset, no dialog opens, no element the payloads spell
appears, and the text is shown literally.
"""

from __future__ import annotations

import io
import json
import re
import tarfile

import pytest

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture fails (make test) or skips with the reason
    expect = None  # type: ignore[assignment]

from tests.ui.conftest import UI
from tests.ui.test_web_ui import connected, put_policy, say

pytestmark = pytest.mark.timeout(90)

PAYLOADS = [
    "<img src=x onerror=window.__xss=1>",
    "<svg onload=window.__xss=1>",
    '"><script>window.__xss=1</script>',
    "'><img src=x onerror=window.__xss=1 '",
    "javascript:window.__xss=1",
    "${window.__xss=1}`${alert(1)}`",
    "&lt;b&gt;not bold&lt;/b&gt; &amp;",
    "**bold** [link](javascript:window.__xss=1) <a href=javascript:window.__xss=1>a</a>",
    "<iframe srcdoc='<script>parent.__xss=1</script>'>",
    "<style>*{display:none}</style>",
]
P = " ".join(PAYLOADS)

# Tags no rendered text may turn into an element, anywhere in the page.
HOSTILE_ELEMENTS = "img, svg, script:not([src='/ui/app.js']), iframe, style, a, object, embed"

# Every dialog, every CSP report and every new element of a hostile kind, from before app.js runs.
WATCH = """() => {
  window.__dialogs = [];
  for (const f of ["alert", "confirm", "prompt"]) window[f] = (m) => { window.__dialogs.push(String(m)); };
  window.__csp = [];
  document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
  window.__spawned = [];
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) {
      if (n.nodeType !== 1) continue;
      for (const x of [n, ...n.querySelectorAll("*")]) {
        if (x.matches("script[src='/ui/app.js']")) continue;  // the page's own
        if (/^(IMG|SVG|SCRIPT|IFRAME|STYLE|A|OBJECT|EMBED)$/i.test(x.tagName)) window.__spawned.push(x.outerHTML.slice(0, 80));
      }
    }
  }).observe(document, { childList: true, subtree: true });
}"""


def manifest(name: str, description: str = "hostile", version: str = "1", tools: str = "[echo]") -> str:
    return (f"name: {name}\nversion: {json.dumps(version)}\ndescription: {json.dumps(description)}\n"
            f"tools: {tools}\nlimits:\n  timeout_s: 30\n")


def archive(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def upload(ui: UI, key: str, name: str, main: str, **kw: str) -> None:
    blob = archive({"bundle.yaml": manifest(name, **kw), "main.py": main})
    r = await ui.node.client(key).post("/v1/bundles", content=blob, headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text


async def assert_inert(ui: UI) -> None:
    page = ui.page
    assert await page.evaluate("window.__xss") is None
    assert await page.evaluate("window.__dialogs") == []
    assert await page.evaluate("window.__spawned") == []
    assert await page.locator(HOSTILE_ELEMENTS).count() == 0
    assert await page.evaluate("window.__csp") == []
    assert ui.js_errors == []


async def watched(ui: UI) -> None:
    await ui.page.add_init_script(f"({WATCH})();")


EMITTER = f"""
P = {P!r}


async def main(ctx):
    await ctx.thinking(P)
    await ctx.answer(P)
    await ctx.status(P)
    await ctx.citation(P, title=P, source="javascript:window.__xss=1")
    await ctx.followups([P, "javascript:window.__xss=1"])
    await ctx.emit("custom", name=P, data={{"html": P, "nested": {{"deep": [P, {{"x": P}}]}}}})
    try:
        await ctx.call(P, **{{P: P}})  # a tool this bundle may not call, by a hostile name
    except Exception:
        pass
    await ctx.answer("|" + ctx.input)
"""


async def test_bundle_events_and_input_render_as_text(ui: UI) -> None:
    await watched(ui)
    key = await connected(ui)
    await upload(ui, key, "hostile", EMITTER, description=P, version='"><img src=x onerror=window.__xss=1>')
    page = ui.page
    await page.click("#key-save")  # reconnect: the bundle list now has the upload
    await expect(page.locator("#bundle option[value=hostile]")).to_have_count(1)
    await page.select_option("#bundle", "hostile")
    await expect(page.locator("#bundle-desc")).to_have_text(P)

    bubble = await say(ui, "hostile", P)
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".answer")).to_have_text(P + "|" + P)
    await expect(bubble.locator(".thinking")).to_have_text(P)
    await expect(bubble.locator(".citation")).to_have_text(f"[{P}] javascript:window.__xss=1")
    await expect(bubble.locator(".followups button")).to_have_text([P, "javascript:window.__xss=1"])
    await expect(bubble.locator(".tool.denied")).to_have_text(re.compile(r"^⚙ " + re.escape(P) + r" → \S+$"))
    await expect(page.locator(".msg.user")).to_have_text(P)
    await bubble.locator(".followups button").first.click()
    await expect(page.locator("#input")).to_have_value(P)
    await assert_inert(ui)


FAILER = f"""
P = {P!r}


async def main(ctx):
    raise RuntimeError(P)
"""


async def test_run_failure_message_renders_as_text(ui: UI) -> None:
    await watched(ui)
    key = await connected(ui)
    await upload(ui, key, "hostile-fail", FAILER)
    await ui.page.click("#key-save")
    await expect(ui.page.locator("#bundle option[value=hostile-fail]")).to_have_count(1)
    bubble = await say(ui, "hostile-fail", "x")
    await expect(bubble.locator(".meta")).to_have_text(re.compile(r"^failed: .*" + re.escape(P)))
    await assert_inert(ui)


def refuse_with(text: str):
    async def refuse(route) -> None:  # type: ignore[no-untyped-def]
        await route.fulfill(status=409, content_type="application/problem+json", body=text)
    return refuse


async def test_api_error_detail_renders_as_text(ui: UI) -> None:
    await watched(ui)
    await connected(ui)
    page = ui.page
    # the node's own answer to a bundle name it refuses
    await page.evaluate("(p) => { const o = document.createElement('option'); o.value = o.textContent = p;"
                        " document.getElementById('bundle').appendChild(o); }", P)
    await page.select_option("#bundle", P)
    await page.fill("#input", "hi")
    await page.press("#input", "Enter")
    await expect(page.locator("#error")).to_contain_text("input.invalid: body.bundle")
    # a problem whose code and detail are hostile (and a detail that is not even a string)
    detail = [{"msg": P}]
    for body, shown in (({"code": P, "detail": P}, f"{P}: {P}"),
                        ({"code": {"x": P}, "detail": detail}, json.dumps(detail, separators=(",", ":")))):
        await page.route("**/v1/runs", refuse_with(json.dumps(body)))
        await page.fill("#input", "hi")
        await page.press("#input", "Enter")
        await expect(page.locator("#error")).to_have_text(shown)
        await page.unroute("**/v1/runs")
    await assert_inert(ui)


async def test_url_hash_and_query_are_inert(ui: UI) -> None:
    await watched(ui)
    _, key = await ui.node.tenant()
    page = ui.page
    for suffix in (f"#{P}", "#run_<img src=x onerror=window.__xss=1>", f"?run={P}#x"):
        await page.goto(ui.node.base_url + "/ui/" + suffix)
        await ui.connect(key)
        await expect(page.locator("#whoami")).to_have_text(re.compile(r"^connected as "))
        await assert_inert(ui)


APPROVAL_ASKER = f"""
P = {P!r}


async def main(ctx):
    await ctx.call("echo", **{{P: P, "path": "\\u202egnp.exe", "nested": {{"a": [P]}}}})
    await ctx.answer("approved")
"""


async def test_approval_of_hostile_args_renders_as_text(ui: UI) -> None:
    await watched(ui)
    key = await connected(ui)
    await put_policy(ui, key, "version: 1\nrules:\n  - id: hostile-rule\n    tool: echo\n"
                              f"    verdict: require_approval\n    reason: {json.dumps(P)}\n")
    await upload(ui, key, "hostile-ask", APPROVAL_ASKER)
    page = ui.page
    await page.click("#key-save")
    await expect(page.locator("#bundle option[value=hostile-ask]")).to_have_count(1)
    bubble = await say(ui, "hostile-ask", "x")
    pending = page.locator("#approvals li")
    await expect(pending).to_have_count(1)
    await expect(pending.locator("div").first).to_have_text("echo — " + P)
    await expect(bubble.locator(".tool").first).to_have_text("‖ waiting for approval of echo: " + P)
    shown = await pending.locator("code").text_content()
    assert shown is not None and json.dumps(P, ensure_ascii=False) in shown, shown
    # a right-to-left override cannot make "\u202egnp.exe" pass for "exe.png": it is shown escaped
    assert '"path":"\\u{202E}gnp.exe"' in shown and "\u202e" not in shown, shown
    await assert_inert(ui)
    await pending.get_by_role("button", name="Approve").click()
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".answer")).to_have_text("approved")
    await assert_inert(ui)


ODD_EVENTS = """
async def main(ctx):
    await ctx.emit("followups", items={"not": "a list"})
    await ctx.emit("followups", items=7)
    await ctx.emit("followups", items=[{"q": 1}, None, 3, "<b>ok</b>"])
    await ctx.emit("status", text={"x": "<img src=x onerror=window.__xss=1>"})
    await ctx.emit("citation", title={"t": 1}, doc_id=[1], source=None)
    await ctx.emit("custom", name=None, data=None)
    await ctx.answer("still here")
"""


async def test_odd_event_data_does_not_stop_the_stream(ui: UI) -> None:
    # Before: `for (const q of ev.items)` threw on a non-list, the stream reader died with it and
    # the bubble never showed the rest of the run ("ev.items is not iterable" in #error).
    await watched(ui)
    key = await connected(ui)
    await upload(ui, key, "odd-events", ODD_EVENTS)
    await ui.page.click("#key-save")
    await expect(ui.page.locator("#bundle option[value=odd-events]")).to_have_count(1)
    bubble = await say(ui, "odd-events", "x")
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(bubble.locator(".answer")).to_have_text("still here")
    await expect(bubble.locator(".followups button")).to_have_text(['{"q":1}', "3", "<b>ok</b>"])
    await expect(bubble.locator(".citation")).to_have_text('[{"t":1}] ')
    await expect(ui.page.locator("#error")).to_have_text("")
    await assert_inert(ui)


# At every change of the approvals list: which approvals it shows, and whether each button was disabled.
RECORD_APPROVAL_CHANGES = """() => {
  window.__changes = [];
  const list = document.getElementById("approvals");
  new MutationObserver(() => {
    window.__changes.push({ ids: [...list.children].map((li) => li.dataset.approval),
                            disabled: [...list.querySelectorAll("button")].map((b) => b.disabled) });
  }).observe(list, { childList: true });
}"""


async def test_approvals_stay_in_place_and_wait_before_a_click(ui: UI) -> None:
    # Before: the list was rebuilt newest first on every refresh, so a new approval was pushed in
    # above the one being read, and its buttons took a click at once: a click (or the second
    # click of a double click on Approve) aimed at one approval could decide another.
    key = await connected(ui)
    await put_policy(ui, key, "version: 1\nrules:\n  - id: ask\n    tool: echo\n    verdict: require_approval\n")
    page = ui.page
    await page.evaluate(RECORD_APPROVAL_CHANGES)
    bubble = await say(ui, "hello-tools", "first")
    items = page.locator("#approvals li")
    await expect(items).to_have_count(1)
    first_id = await items.first.get_attribute("data-approval")
    await items.first.evaluate("li => { li.__mark = 'first'; }")
    await expect(items.first.get_by_role("button", name="Approve")).to_be_enabled()

    c = ui.node.client(key)
    r = await c.post("/v1/runs", json={"bundle": "hello-tools", "input": "second"})
    assert r.status_code == 201, r.text
    await expect(items).to_have_count(2, timeout=10_000)  # the side bar's next refresh
    second_id = await items.nth(1).get_attribute("data-approval")
    assert second_id not in (None, first_id)
    # the first approval's element is the same one, still on top; the new one came in below it
    assert await items.first.evaluate("li => li.__mark") == "first"
    assert await items.first.get_attribute("data-approval") == first_id

    await expect(items.nth(1).get_by_role("button", name="Approve")).to_be_enabled()
    await items.first.get_by_role("button", name="Approve").click()
    await expect(bubble.locator(".meta")).to_have_text("done")
    await expect(items).to_have_count(1)
    assert await items.first.get_attribute("data-approval") == second_id
    changes = await page.evaluate("window.__changes")
    assert [ch["ids"] for ch in changes] == [[first_id], [first_id, second_id], [second_id]]
    assert all(all(ch["disabled"]) for ch in changes), changes  # no button took a click as the list changed
    pending = (await c.get("/v1/approvals", params={"status": "pending"})).json()["data"]
    assert [a["id"] for a in pending] == [second_id]  # the second one is still for a human to decide
    await expect(items.first.get_by_role("button", name="Reject")).to_be_enabled()
    await items.first.get_by_role("button", name="Reject").click()
    await expect(items).to_have_count(0)
    assert ui.js_errors == []


async def test_ui_security_headers(ui: UI) -> None:
    c = ui.node.client()
    for path in ("/ui/", "/ui/app.js", "/ui/app.css", "/ui/nope.js"):
        r = await c.get(path)
        csp = r.headers.get("content-security-policy", "")
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp, (path, csp)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "require-trusted-types-for 'script'" in csp
        assert r.headers.get("x-content-type-options") == "nosniff", path
        assert r.headers.get("x-frame-options") == "DENY", path
        assert r.headers.get("referrer-policy") == "no-referrer", path
    api = await c.get("/v1/bundles")  # an API answer (a 401 here): no CSP, the other three
    assert api.status_code == 401 and "content-security-policy" not in api.headers
    assert api.headers.get("x-content-type-options") == "nosniff" and api.headers.get("x-frame-options") == "DENY"


async def test_ui_cannot_be_framed_and_refuses_html_strings(ui: UI) -> None:
    await watched(ui)
    await connected(ui)
    page = ui.page
    # Trusted Types: even a bug that assigned a string to innerHTML could not create markup
    made = await page.evaluate("""() => {
      try { document.getElementById('messages').innerHTML = '<img src=x onerror=window.__xss=1>'; return 'assigned'; }
      catch (e) { return e.name; } }""")
    assert made == "TypeError"
    assert await page.evaluate("window.__csp") == ["require-trusted-types-for trusted-types-sink"]
    await page.evaluate("window.__csp = []")
    # another origin (the same host by a different name) cannot frame the UI
    other = ui.node.base_url.replace("127.0.0.1", "localhost")
    await page.route(other + "/framer", lambda route: route.fulfill(
        status=200, content_type="text/html", body=f'<iframe id=f src="{ui.node.base_url}/ui/"></iframe>'))
    await page.goto(other + "/framer")
    frame = page.frame_locator("#f")
    await expect(frame.locator("#api-key")).to_have_count(0)
    assert await page.evaluate("window.__xss") is None and ui.js_errors == []
