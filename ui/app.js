// Stockade web UI: chat with a bundle over the REST API and the SSE stream.
// EventSource cannot send an Authorization header, so the stream is read with fetch().
// Everything shown comes from tenants, bundles, tools or LLMs: it goes into the page as text
// (textContent, never innerHTML; the CSP's Trusted Types refuse any string assigned as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
// The API key lives in this page's memory only: any page of the origin reads localStorage and
// sessionStorage, and /docs runs a CDN's script. Earlier versions stored it there: gone on load.
localStorage.removeItem("stockade.key");
const state = { key: "", conversation: newConversationId(), run: null, abort: null };

// Any JSON value as display text: an event's fields are whatever the bundle put there.
function str(v) { return v === undefined || v === null ? "" : typeof v === "string" ? v : JSON.stringify(v); }

// For what an approver decides on: invisible and direction-changing characters (zero-width,
// bidi overrides and isolates, other format and control characters) shown as \u{…} escapes,
// so that "\u202Egnp.exe" cannot pass for "exe.png" and nothing hides inside the arguments.
const HIDDEN = /[\u0000-\u0008\u000B-\u001F\u007F-\u009F\u00AD\u061C\u115F\u1160\u180E\u200B-\u200F\u202A-\u202E\u2060-\u206F\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF9-\uFFFB]|\uDB40[\uDC00-\uDDEF]/g;
function visible(v) {
  return str(v).replace(HIDDEN, (c) => "\\u{" + c.codePointAt(0).toString(16).toUpperCase() + "}");
}

function newConversationId() { return "ui-" + Math.random().toString(36).slice(2, 12); }

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.key }, opts.headers || {});
  if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!r.ok) {
    const err = new Error(str((body && body.detail) || r.statusText));
    err.code = body && typeof body.code === "string" ? body.code : undefined; err.status = r.status; throw err;
  }
  return body;
}

function showError(e) { $("error").textContent = e ? (e.code ? e.code + ": " : "") + e.message : ""; }

function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}

async function connect() {
  showError(null);
  try {
    const bundles = await api("/v1/bundles");
    const sel = $("bundle");
    sel.replaceChildren();
    for (const b of bundles.data) {
      const o = el("option", null, b.name + (b.platform ? "" : " (tenant)"));
      o.value = b.name; o.dataset.desc = b.description || "";
      sel.appendChild(o);
    }
    const chat = [...sel.options].find((o) => o.value === "chat");
    if (chat) sel.value = "chat";
    sel.dispatchEvent(new Event("change"));
    $("whoami").textContent = "connected";
    refreshSide();
  } catch (e) { $("whoami").textContent = ""; showError(e); }
}

async function refreshSide() {
  if (!state.key) return;
  try {
    const seq = state.sideSeq = (state.sideSeq || 0) + 1;
    const a = await api("/v1/approvals?status=pending");
    if (seq === state.sideSeq) renderApprovals(Array.isArray(a.data) ? a.data : []);  // a later answer wins
  } catch (_) { /* viewer keys cannot list approvals everywhere; ignore */ }
  try {
    const b = await api("/v1/budgets");
    $("budget").textContent = b.data.length
      ? b.data.map((x) => `${x.scope}: $${x.spent_usd.toFixed(4)} of $${x.cap_usd.toFixed(2)}`).join("\n")
      : "no caps set";
  } catch (_) { /* ignore */ }
}

// The pending approvals, oldest first, each item kept in place while it is pending: a new one is
// appended below, never pushed in above the one being read. Whenever the list changes, all its
// buttons wait ARM_MS before they take a click, so a click (or the second click of a double
// click) aimed at one approval cannot land on another that just moved under the pointer.
const ARM_MS = 600;
function renderApprovals(items) {
  const list = $("approvals");
  const pending = items.filter((ap) => ap && typeof ap.id === "string")
    .sort((x, y) => (Number(x.created_at) || 0) - (Number(y.created_at) || 0));
  const ids = new Set(pending.map((ap) => ap.id));
  let changed = false;
  for (const li of [...list.children]) {
    if (!ids.has(li.dataset.approval)) { li.remove(); changed = true; }
  }
  const shown = new Map([...list.children].map((li) => [li.dataset.approval, li]));
  for (const ap of pending) {
    const li = shown.get(ap.id);
    if (!li) { list.appendChild(approvalItem(ap)); changed = true; continue; }
    const count = li.querySelector(".votes");  // kept in place: only its count of votes moves on
    if (count) count.textContent = votesText(ap);
  }
  $("approval-count").textContent = String(pending.length);
  if (changed) arm(list);
}

function arm(list) {
  for (const b of list.querySelectorAll("button")) b.disabled = true;
  clearTimeout(state.armTimer);
  state.armTimer = setTimeout(() => {
    for (const li of list.children) if (!li.dataset.busy) for (const b of li.querySelectorAll("button")) b.disabled = false;
  }, ARM_MS);
}

function votesText(ap) {  // how many of the people needed have approved
  const yes = (Array.isArray(ap.votes) ? ap.votes : []).filter((v) => v && v.decision === "approve").length;
  return `${yes} of ${Number(ap.required_approvals)} approvals`;
}

function approvalItem(ap) {
  const li = el("li");
  li.dataset.approval = ap.id;
  li.appendChild(el("div", null, visible(ap.tool) + " — " + visible(ap.reason || ap.rule_id || "")));
  if (Number(ap.required_approvals) > 1) li.appendChild(el("div", "tool votes", votesText(ap)));  // several must approve
  li.appendChild(el("code", null, visible(JSON.stringify(ap.args === undefined ? null : ap.args))));
  const row = el("div");
  for (const [label, decision] of [["Approve", "approve"], ["Reject", "reject"]]) {
    const b = el("button", decision === "reject" ? "secondary" : "", label);
    b.type = "button"; b.dataset.approval = ap.id; b.dataset.decision = decision;
    b.onclick = async () => {
      li.dataset.busy = "1";
      for (const x of row.children) x.disabled = true;
      try {
        await api(`/v1/approvals/${encodeURIComponent(ap.id)}/decision`,
          { method: "POST", json: { decision, args_hash: ap.args_hash } });
      } catch (e) {
        showError(e);
        delete li.dataset.busy;
        for (const x of row.children) x.disabled = false;
      }
      refreshSide();
    };
    row.appendChild(b);
  }
  li.appendChild(row);
  return li;
}

function addMessage(role, text) {
  const m = el("div", "msg " + role);
  if (text !== undefined) m.appendChild(el("div", "text", text));
  $("messages").appendChild(m);
  scrollDown();
  return m;
}

// Reading scrollHeight lays the page out at once: done per event, a run of a few MB in a thousand
// deltas froze the page for minutes (each layout takes longer as the answer grows). Once a frame.
function scrollDown() {
  if (state.scrollPending) return;
  state.scrollPending = true;
  requestAnimationFrame(() => { state.scrollPending = false; $("messages").scrollTop = $("messages").scrollHeight; });
}

async function send(text) {
  showError(null);
  addMessage("user", text);
  const bubble = addMessage("assistant");
  const thinking = el("div", "thinking"); thinking.hidden = true;
  const answer = el("div", "text answer");
  const meta = el("div", "meta");
  bubble.append(thinking, answer, meta);
  let run;
  try {
    run = await api("/v1/runs", { method: "POST", json: { bundle: $("bundle").value, input: text, conversation_id: state.conversation } });
  } catch (e) { bubble.remove(); showError(e); return; }
  state.run = run.id;
  bubble.dataset.run = run.id;
  $("cancel").disabled = false;
  $("send").disabled = true;
  try { await stream(run.id, { thinking, answer, meta, bubble }); }
  catch (e) { if (e.name !== "AbortError") showError(e); }
  finally { state.run = null; $("cancel").disabled = true; $("send").disabled = false; refreshSide(); }
}

async function stream(runId, view) {
  let last = 0;
  for (let attempt = 0; attempt < 20; attempt++) {          // reconnect with Last-Event-ID: no event is lost
    state.abort = new AbortController();
    const r = await fetch(`/v1/runs/${encodeURIComponent(runId)}/events`, {
      headers: { Authorization: "Bearer " + state.key, "Last-Event-ID": String(last) }, signal: state.abort.signal });
    if (!r.ok) throw new Error("stream failed: " + r.status);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, i); buf = buf.slice(i + 2);
        let id = null, data = null;
        for (const line of frame.split("\n")) {
          if (line.startsWith("id: ")) id = Number(line.slice(4));
          else if (line.startsWith("data: ")) data = line.slice(6);
        }
        if (data === null) continue;
        if (id !== null) last = id;
        let ev;
        try { ev = JSON.parse(data); } catch (_) { continue; }
        if (ev === null || typeof ev !== "object") continue;
        try { if (render(ev, view)) return; }
        catch (e) { console.warn("event not shown", ev.type, e); }  // one odd event never stops the stream
      }
    }
  }
}

// Returns true after the terminal event.
function render(ev, v) {
  switch (ev.type) {
    case "message.delta":
      // one text node per delta: `textContent +=` copied the whole answer so far on every delta (MBs each)
      if (ev.channel === "thinking") { v.thinking.hidden = false; v.thinking.append(str(ev.text)); }
      else v.answer.append(str(ev.text));
      break;
    case "tool.result": {
      const t = el("div", "tool" + (ev.code ? " denied" : ""),
        `⚙ ${visible(ev.tool)} → ${str(ev.code || ev.verdict)}${ev.cost_usd ? " $" + Number(ev.cost_usd).toFixed(6) : ""}${ev.deduped ? " (deduped)" : ""}`);
      v.bubble.insertBefore(t, v.answer);
      break;
    }
    case "approval.requested": {
      v.bubble.insertBefore(el("div", "tool", `‖ waiting for approval of ${visible(ev.tool)}: ${visible(ev.reason || ev.rule_id || "")}`), v.answer);
      refreshSide();
      break;
    }
    case "approval.vote":  // one vote of several needed: "1 of 2 approvals" as it is cast
      v.bubble.insertBefore(el("div", "tool",
        `✓ ${str(ev.decision)} (${Number(ev.approvals)} of ${Number(ev.required_approvals)} approvals)`), v.answer);
      refreshSide();
      break;
    case "approval.resolved":
      v.bubble.insertBefore(el("div", "tool", `▶ approval ${str(ev.decision)}`), v.answer);
      refreshSide();
      break;
    case "citation": {
      const c = el("div", "citation", `[${str(ev.title || ev.doc_id)}] ${str(ev.source)}`);
      v.bubble.appendChild(c);
      break;
    }
    case "followups": {
      const box = el("div", "followups");
      for (const item of Array.isArray(ev.items) ? ev.items : []) {
        const q = str(item);
        if (!q) continue;
        const b = el("button", null, q);
        b.type = "button";
        b.onclick = () => { $("input").value = q; };
        box.appendChild(b);
      }
      v.bubble.appendChild(box);
      break;
    }
    case "status": v.meta.textContent = str(ev.text); break;
    case "run.completed": v.meta.textContent = "done"; return true;
    case "run.failed": case "run.timed_out": case "run.canceled":
      v.meta.className = "meta status-" + ev.type.slice(4);
      v.meta.textContent = ev.type.replace("run.", "") + (ev.message ? ": " + str(ev.message) : "");
      return true;
  }
  scrollDown();
  return false;
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("api-key").value.trim();
  connect();
});
$("bundle").addEventListener("change", () => {
  const o = $("bundle").selectedOptions[0];
  $("bundle-desc").textContent = o ? o.dataset.desc : "";
});
$("new-chat").addEventListener("click", () => { state.conversation = newConversationId(); $("messages").replaceChildren(); });
$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.run) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("cancel").addEventListener("click", async () => {
  if (!state.run) return;
  try { await api(`/v1/runs/${encodeURIComponent(state.run)}/cancel`, { method: "POST" }); } catch (e) { showError(e); }
});
setInterval(refreshSide, 3000);
