// Stockade web UI: chat with a bundle over the REST API and the SSE stream.
// EventSource cannot send an Authorization header, so the stream is read with fetch().
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem("stockade.key") || "", conversation: newConversationId(), run: null, abort: null };

function newConversationId() { return "ui-" + Math.random().toString(36).slice(2, 12); }

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.key }, opts.headers || {});
  if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!r.ok) {
    const err = new Error((body && body.detail) || r.statusText);
    err.code = body && body.code; err.status = r.status; throw err;
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
    sel.innerHTML = "";
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
    const a = await api("/v1/approvals?status=pending");
    const list = $("approvals");
    list.innerHTML = "";
    $("approval-count").textContent = String(a.data.length);
    for (const ap of a.data) {
      const li = el("li");
      li.appendChild(el("div", null, ap.tool + " — " + (ap.reason || ap.rule_id || "")));
      li.appendChild(el("code", null, JSON.stringify(ap.args)));
      const row = el("div");
      for (const [label, decision] of [["Approve", "approve"], ["Reject", "reject"]]) {
        const b = el("button", decision === "reject" ? "secondary" : "", label);
        b.dataset.approval = ap.id; b.dataset.decision = decision;
        b.onclick = async () => {
          try { await api(`/v1/approvals/${ap.id}/decision`, { method: "POST", json: { decision, args_hash: ap.args_hash } }); }
          catch (e) { showError(e); }
          refreshSide();
        };
        row.appendChild(b);
      }
      li.appendChild(row);
      list.appendChild(li);
    }
  } catch (_) { /* viewer keys cannot list approvals everywhere; ignore */ }
  try {
    const b = await api("/v1/budgets");
    $("budget").textContent = b.data.length
      ? b.data.map((x) => `${x.scope}: $${x.spent_usd.toFixed(4)} of $${x.cap_usd.toFixed(2)}`).join("\n")
      : "no caps set";
  } catch (_) { /* ignore */ }
}

function addMessage(role, text) {
  const m = el("div", "msg " + role);
  if (text !== undefined) m.appendChild(el("div", "text", text));
  $("messages").appendChild(m);
  $("messages").scrollTop = $("messages").scrollHeight;
  return m;
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
    const r = await fetch(`/v1/runs/${runId}/events`, {
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
        if (render(JSON.parse(data), view)) return;
      }
    }
  }
}

// Returns true after the terminal event.
function render(ev, v) {
  switch (ev.type) {
    case "message.delta":
      if (ev.channel === "thinking") { v.thinking.hidden = false; v.thinking.textContent += ev.text; }
      else v.answer.textContent += ev.text;
      break;
    case "tool.result": {
      const t = el("div", "tool" + (ev.code ? " denied" : ""),
        `⚙ ${ev.tool} → ${ev.code || ev.verdict}${ev.cost_usd ? " $" + ev.cost_usd.toFixed(6) : ""}${ev.deduped ? " (deduped)" : ""}`);
      v.bubble.insertBefore(t, v.answer);
      break;
    }
    case "approval.requested": {
      v.bubble.insertBefore(el("div", "tool", `‖ waiting for approval of ${ev.tool}: ${ev.reason || ev.rule_id || ""}`), v.answer);
      refreshSide();
      break;
    }
    case "approval.resolved":
      v.bubble.insertBefore(el("div", "tool", `▶ approval ${ev.decision}`), v.answer);
      break;
    case "citation": {
      const c = el("div", "citation", `[${ev.title || ev.doc_id}] ${ev.source || ""}`);
      v.bubble.appendChild(c);
      break;
    }
    case "followups": {
      const box = el("div", "followups");
      for (const q of ev.items || []) {
        const b = el("button", null, q);
        b.onclick = () => { $("input").value = q; };
        box.appendChild(b);
      }
      v.bubble.appendChild(box);
      break;
    }
    case "status": v.meta.textContent = ev.text; break;
    case "run.completed": v.meta.textContent = "done"; return true;
    case "run.failed": case "run.timed_out": case "run.canceled":
      v.meta.className = "meta status-" + ev.type.slice(4);
      v.meta.textContent = ev.type.replace("run.", "") + (ev.message ? ": " + ev.message : "");
      return true;
  }
  $("messages").scrollTop = $("messages").scrollHeight;
  return false;
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("api-key").value.trim();
  localStorage.setItem("stockade.key", state.key);
  connect();
});
$("bundle").addEventListener("change", () => {
  const o = $("bundle").selectedOptions[0];
  $("bundle-desc").textContent = o ? o.dataset.desc : "";
});
$("new-chat").addEventListener("click", () => { state.conversation = newConversationId(); $("messages").innerHTML = ""; });
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
  try { await api(`/v1/runs/${state.run}/cancel`, { method: "POST" }); } catch (e) { showError(e); }
});
setInterval(refreshSide, 3000);
if (state.key) { $("api-key").value = state.key; connect(); }
