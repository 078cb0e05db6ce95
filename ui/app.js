// Stockade web UI: chat with a bundle over the REST API and the SSE stream.
// EventSource cannot send an Authorization header, so the stream is read with fetch().
// Everything shown comes from tenants, bundles, tools or LLMs: it goes into the page as text
// (textContent, never innerHTML; the CSP's Trusted Types refuse any string assigned as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
// The API key lives in this page's memory only: any page of the origin reads localStorage and
// sessionStorage, and /docs runs a CDN's script. Earlier versions stored it there: gone on load.
localStorage.removeItem("stockade.key");
// current: the run being followed - { abort, run, canceled, wake } - from Send until its end, or until
// "New conversation" stops following it. connected: the key was accepted and has not been refused since.
// resume: the conversation and run a reload (or a link opened while not connected) left in the address, shown
// once a key is accepted. gen: the number of the latest Connect (an earlier one's answers are then ignored).
// accepted: the last key /v1/me accepted; me: its answer (role, key id, what it may do).
const state = { key: "", connected: false, conversation: newConversationId(), current: null, poll: null, cannotDecide: false,
  cannotStart: false, resume: null, gen: 0, accepted: "", me: null };
const POLL_MS = 3000;

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
  const key = state.key;
  const headers = Object.assign({ Authorization: "Bearer " + key }, opts.headers || {});
  if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  const body = await readBody(r);
  if (!r.ok) throw httpError(r, body, key);
  return body;
}

async function readBody(r) {
  const text = await r.text();
  try { return text ? JSON.parse(text) : null; } catch (_) { return text; }
}

// The problem document's code and detail; a 401 for the key in use means it no longer works at all.
function httpError(r, body, key) {
  const err = new Error(str((body && body.detail) || r.statusText || "HTTP " + r.status));
  err.code = body && typeof body.code === "string" ? body.code : undefined; err.status = r.status;
  if (r.status === 401 && key === state.key) keyRejected();
  return err;
}

function showError(e) { $("error").textContent = e ? (e.code ? e.code + ": " : "") + e.message : ""; }

function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}

// Two Connects may be in flight (a double click, another key pasted): only the latest one's answers count, so
// an earlier key's late /v1/me never labels the page, and only one poll ever runs.
async function connect() {
  const gen = ++state.gen;
  showError(null);
  stopPolling();
  state.connected = false;
  setWhoami("connecting…", false);  // not the last key's "connected as …" while this one is asked about
  setCannotDecide(false);  // a new key: its role is found out again
  try {
    const me = await api("/v1/me");
    if (gen !== state.gen) return;
    state.me = me;
    // a key that may not decide (viewer, member) is never offered Approve / Reject; one that may not start
    // runs (viewer, approver) neither Send nor Cancel
    setCannotDecide(me.can_decide === false);
    setCannotStart(me.can_start_runs === false);
    // another key (another tenant's, maybe) does not go on with the last one's conversation
    if (state.accepted && state.accepted !== state.key) { leaveConversation(); clearView(); }
    state.accepted = state.key;
    const bundles = await api("/v1/bundles");
    if (gen !== state.gen) return;
    const sel = $("bundle");
    sel.replaceChildren();
    for (const b of bundles.data) {
      if (b.shadowed) continue;  // the tenant's own bundle of that name is what runs under it
      const o = el("option", null, b.name + (b.platform ? "" : " (tenant)"));
      o.value = b.name; o.dataset.desc = b.description || "";
      sel.appendChild(o);
    }
    const chat = [...sel.options].find((o) => o.value === "chat");
    if (chat) sel.value = "chat";
    sel.dispatchEvent(new Event("change"));
    state.connected = true;
    setWhoami("connected as " + visible(String(me.role)) + (me.user_id ? " (user " + visible(String(me.user_id)) + ")" : ""), false);
    state.poll = setInterval(refreshSide, POLL_MS);
    refreshSide();
    const back = state.resume;
    state.resume = null;
    if (back && !state.current && !$("messages").children.length) { state.conversation = back.c; resume(back.r); }
  } catch (e) { if (gen === state.gen) { setWhoami("", false); showError(e); } }
}

function stopPolling() { clearInterval(state.poll); state.poll = null; }

function setWhoami(text, bad) { $("whoami").textContent = text; $("whoami").classList.toggle("bad", bad); }

// The server refused the key (revoked, or never valid): say so and stop asking with it every few seconds.
function keyRejected() {
  stopPolling();
  if (!state.connected) return;  // connect() shows its own error
  state.connected = false;
  setWhoami("disconnected — key rejected", true);
}

async function refreshSide() {
  if (!state.connected) return;
  const key = state.key;
  try {
    const seq = state.sideSeq = (state.sideSeq || 0) + 1;
    const a = await pendingApprovals();
    if (seq === state.sideSeq) renderApprovals(a.items, a.more);  // a later answer wins
  } catch (_) { /* shown in the header if the key was refused; else the next poll tries again */ }
  if (!state.connected || key !== state.key) return;
  try {
    const b = await api("/v1/budgets");
    const accounts = Array.isArray(b.data) ? b.data : [];
    const box = $("budget");
    box.replaceChildren(...accounts.map((x) => el("div", "account", accountText(x))));
    if (!accounts.length) box.textContent = "no caps set";
  } catch (_) { /* as above */ }
}

// Every pending approval, a page at a time (newest first; next_before names the next page), up to
// APPROVAL_PAGES pages: more: there were more than that.
const APPROVAL_PAGES = 20, APPROVAL_PAGE = 500;
async function pendingApprovals() {
  const byId = new Map();
  let before = null;
  for (let n = 0; n < APPROVAL_PAGES; n++) {
    const q = new URLSearchParams({ status: "pending", limit: String(APPROVAL_PAGE) });
    if (before) q.set("before", before);
    const page = await api("/v1/approvals?" + q);
    for (const ap of Array.isArray(page && page.data) ? page.data : []) if (ap && typeof ap.id === "string") byId.set(ap.id, ap);
    before = page && typeof page.next_before === "string" && page.next_before ? page.next_before : null;
    if (!before) return { items: [...byId.values()], more: false };
  }
  return { items: [...byId.values()], more: true };
}

// An amount in dollars with at least `digits` decimals, and more if fewer would show a non-zero amount as
// zero (a cap of $0.00001 is not "$0.00").
function money(v, digits) {
  const n = Number(v) || 0;
  let d = digits;
  while (n !== 0 && Number(n.toFixed(d)) === 0 && d < 12) d++;
  return "$" + n.toFixed(d);
}

// "user usr_…: $0.0012 of $1.00": which account, what it has spent, its cap (lifetime caps say so).
function accountText(x) {
  return `${visible(x.scope)} ${visible(x.scope_id)}: ${money(x.spent_usd, 4)} of ${money(x.cap_usd, 2)}`
    + (x.period === "lifetime" ? " (lifetime)" : "");
}

// The pending approvals, oldest first, each item kept in place while it is pending: a new one is
// appended below, never pushed in above the one being read. Whenever the list changes, all its
// buttons wait ARM_MS before they take a click, so a click (or the second click of a double
// click) aimed at one approval cannot land on another that just moved under the pointer.
const ARM_MS = 600;
function renderApprovals(items, more) {
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
    if (setVoted(li, votedByMe(ap))) changed = true;
  }
  $("approval-count").textContent = String(pending.length) + (more ? "+" : "");
  if (changed) arm(list);
}

function arm(list) {
  for (const b of list.querySelectorAll("button")) b.disabled = true;
  clearTimeout(state.armTimer);
  state.armTimer = setTimeout(() => {
    if (state.cannotDecide) return;
    for (const li of list.children) {
      if (!li.dataset.busy && !li.dataset.voted) for (const b of li.querySelectorAll("button")) b.disabled = false;
    }
  }, ARM_MS);
}

// A key that may not decide (GET /v1/me at connect; or, should its role change, the first decision refused
// for it: auth.forbidden) has every Approve / Reject disabled, with a note.
function setCannotDecide(on) {
  state.cannotDecide = on;
  $("approval-note").hidden = !on;
  if (on) for (const b of $("approvals").querySelectorAll("button")) b.disabled = true;
  else arm($("approvals"));
}

// A key that may not start runs (GET /v1/me at connect; or the first run refused for it: auth.forbidden) is
// offered neither Send nor Cancel, with a note.
function setCannotStart(on) {
  state.cannotStart = on;
  $("send-note").hidden = !on;
  controls();
}

// Send while no run is followed, Cancel while one is; neither for a key that cannot start runs.
function controls() {
  $("send").disabled = Boolean(state.current) || state.cannotStart;
  $("cancel").disabled = !(state.current && state.current.run) || state.cannotStart;
}

// Whether this key (or, for a key bound to a user, that user) has voted on the request: the server refuses
// a second vote (approval.already_decided), so its buttons stay disabled, with a note.
function votedByMe(ap) {
  const me = state.me || {};
  return (Array.isArray(ap.votes) ? ap.votes : []).some((v) => v
    && ((typeof me.key_id === "string" && v.key_id === me.key_id) || (typeof me.user_id === "string" && v.user_id === me.user_id)));
}

// Marks an approval item as voted on by this key (or not); true when that changed.
function setVoted(li, on) {
  if (on === Boolean(li.dataset.voted)) return false;
  const note = li.querySelector(".voted");
  if (on) {
    li.dataset.voted = "1";
    for (const b of li.querySelectorAll("button")) b.disabled = true;
    if (!note) li.appendChild(el("div", "muted voted", "you voted"));
  } else {
    delete li.dataset.voted;
    if (note) note.remove();
  }
  return true;
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
        setVoted(li, true);
        delete li.dataset.busy;
      } catch (e) {
        showError(e);
        delete li.dataset.busy;
        if (e.status === 403 && e.code === "auth.forbidden") setCannotDecide(true);
        else if (!state.cannotDecide) for (const x of row.children) x.disabled = false;
      }
      refreshSide();
    };
    row.appendChild(b);
  }
  li.appendChild(row);
  setVoted(li, votedByMe(ap));
  return li;
}

function addMessage(role, text) {
  const m = el("div", "msg " + role);
  if (text !== undefined) m.appendChild(el("div", "text", text));
  $("messages").appendChild(m);
  scrollDown(true);  // a new turn is shown from wherever the view was
  return m;
}

// Reading scrollHeight lays the page out at once: done per event, a run of a few MB in a thousand
// deltas froze the page for minutes (each layout takes longer as the answer grows). Once a frame.
// The view follows the answer only from the bottom (where the last frame left it, give or take
// FOLLOW_PX): a user who scrolled up to read stays where they are; force: go to the bottom all the same.
const FOLLOW_PX = 48;
function scrollDown(force) {
  if (force) state.scrollForce = true;
  if (state.scrollPending) return;
  state.scrollPending = true;
  requestAnimationFrame(() => {
    const m = $("messages");
    if (state.scrollForce || m.scrollTop + m.clientHeight >= (state.scrollEnd || 0) - FOLLOW_PX) m.scrollTop = m.scrollHeight;
    state.scrollPending = false; state.scrollForce = false; state.scrollEnd = m.scrollHeight;
  });
}

// One turn: the user's message and the assistant's bubble its run's events go into.
function turn(text) {
  const user = addMessage("user", text);
  const bubble = addMessage("assistant");
  const thinking = el("div", "thinking"); thinking.hidden = true;
  const answer = el("div", "text answer");
  const meta = el("div", "meta");
  const conn = el("div", "conn", "reconnecting…"); conn.hidden = true;
  bubble.append(thinking, answer, meta, conn);
  return { user, thinking, answer, meta, conn, bubble };
}

function startJob() {
  const job = { abort: new AbortController(), run: null, canceled: null, wake: null };
  state.current = job;
  controls();
  return job;
}

function endJob(job) {
  if (state.current === job) { state.current = null; controls(); }
  refreshSide();
}

// Follows the run into its bubble until its end (or until it is no longer followed).
async function follow(runId, view, job) {
  job.run = runId;
  view.bubble.dataset.run = runId;
  saveView(runId);
  controls();
  try { await stream(runId, view, job); }
  catch (e) { if (!job.abort.signal.aborted) showError(e); }
  finally { view.conn.hidden = true; }
}

// The text stays in the box until its run is created: a refused (422, 403) or lost send takes its bubbles
// back and leaves the text to send again.
async function send(text) {
  showError(null);
  const job = startJob();
  const view = turn(text);
  try {
    let run;
    try {
      run = await api("/v1/runs", { method: "POST", json: { bundle: $("bundle").value, input: text, conversation_id: state.conversation } });
    } catch (e) {
      view.user.remove(); view.bubble.remove();
      if (job.abort.signal.aborted) return;
      showError(e);
      if (e.status === 403 && e.code === "auth.forbidden") setCannotStart(true);
      return;
    }
    if ($("input").value.trim() === text) $("input").value = "";  // sent (unless typed over since)
    if (job.abort.signal.aborted) return;  // "New conversation" while it was created: not followed
    await follow(run.id, view, job);
  } finally { endJob(job); }
}

// The conversation and the run in view are kept in the page's address (#c=…&r=…: ids, never the key), so a
// reload - which asks for the key again - comes back to them once a key is accepted: the conversation's
// earlier turns from the runs list, and the run in view followed from its first event (replayed from the
// store, then live if it still runs). Its next message goes on in the same conversation.
// c=: what POST /v1/runs takes as a conversation_id (app/routes/runs.py): any longer and every send fails.
const ID = /^[A-Za-z0-9_-]{1,128}$/, CONVERSATION = /^[A-Za-z0-9_-]{1,64}$/;
function saveView(runId) {
  history.replaceState(null, "", location.pathname + location.search + "#" + new URLSearchParams({ c: state.conversation, r: runId }));
}
function clearView() { history.replaceState(null, "", location.pathname + location.search); }
function viewInAddress() {
  const p = new URLSearchParams(location.hash.slice(1));
  const c = p.get("c"), r = p.get("r");
  return c && r && CONVERSATION.test(c) && ID.test(r) ? { c, r } : null;
}

async function resume(runId) {
  const job = startJob();
  try {
    let run;
    try { run = await api(`/v1/runs/${encodeURIComponent(runId)}`); }
    catch (e) {  // gone, or another tenant's: start afresh
      if (job.abort.signal.aborted) return;
      clearView(); state.conversation = newConversationId(); showError(e); return;
    }
    if (job.abort.signal.aborted) return;
    const conversation = typeof run.conversation_id === "string" && CONVERSATION.test(run.conversation_id) ? run.conversation_id : null;
    if (conversation) state.conversation = conversation;
    let earlier = [];
    try {  // the newest page of the key's runs: this conversation's turns before this one, oldest first
      // (a run started without a conversation has none: the other such runs are not its turns)
      const page = conversation ? await api("/v1/runs?limit=200") : { data: [] };
      earlier = (Array.isArray(page.data) ? page.data : []).filter((x) => x && x.id !== run.id
        && x.conversation_id === conversation && Number(x.created_at) <= Number(run.created_at)).reverse();
    } catch (_) { /* the turn in view is shown all the same */ }
    if (job.abort.signal.aborted) return;
    for (const x of earlier) {
      const v = turn(str(x.input));
      v.bubble.dataset.run = str(x.id);
      v.answer.textContent = str(x.output);
      showOutcome(x, v);
    }
    if ([...$("bundle").options].some((o) => o.value === run.bundle)) {
      $("bundle").value = run.bundle;
      $("bundle").dispatchEvent(new Event("change"));
    }
    await follow(run.id, turn(str(run.input)), job);
  } finally { endJob(job); }
}

// Reconnecting after a dropped or failed connection: 0.5 s, doubling up to 5 s; back to 0.5 s once events
// flow again. Runs outlive connections (a server restart included), so it keeps trying until the run's
// terminal event, a refusal that retrying cannot change (401, 403, 404, ...), a cancel, or a new conversation.
const RETRY_MIN_MS = 500, RETRY_MAX_MS = 5000;

async function stream(runId, view, job) {
  const signal = job.abort.signal;
  let last = 0, delay = RETRY_MIN_MS;
  for (;;) {
    let r = null;
    const key = state.key;
    try {
      r = await fetch(`/v1/runs/${encodeURIComponent(runId)}/events`, {
        headers: { Authorization: "Bearer " + key, "Last-Event-ID": String(last) }, signal });
    } catch (e) { if (signal.aborted) throw e; }  // refused, reset, offline: try again
    if (r && r.status === 204) {  // the run has ended and every event was sent: its end must have been lost
      showOutcome(await api(`/v1/runs/${encodeURIComponent(runId)}`), view);
      return;
    }
    if (r && !r.ok) {
      if (!retryable(r.status)) throw httpError(r, await readBody(r).catch(() => null), key);
      if (r.body) r.body.cancel().catch(() => {});  // 429, 5xx (a proxy while the server restarts): try again
    }
    if (r && r.ok && r.body) {
      view.conn.hidden = true;
      const got = await readEvents(r.body.getReader(), view, signal, (id) => { last = id; delay = RETRY_MIN_MS; });
      if (got === "end") return;
    }
    // the connection dropped (or ended) before the run's end: resume after the last event seen
    if (job.canceled) { showOutcome(job.canceled, view); return; }  // the user canceled while cut off
    view.conn.hidden = false;
    await sleep(delay, signal, job);
    delay = Math.min(delay * 2, RETRY_MAX_MS);
  }
}

function retryable(status) { return status === 408 || status === 429 || status >= 500; }

// Reads frames until the body ends or fails; "end" after the run's terminal event.
async function readEvents(reader, view, signal, seen) {
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    let chunk;
    try { chunk = await reader.read(); }
    catch (e) { if (signal.aborted) throw e; return "dropped"; }  // ERR_INCOMPLETE_CHUNKED_ENCODING, reset, ...
    if (chunk.done) return "closed";
    buf += dec.decode(chunk.value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const frame = buf.slice(0, i); buf = buf.slice(i + 2);
      let id = null, data = null;
      for (const line of frame.split("\n")) {
        if (line.startsWith("id: ")) id = Number(line.slice(4));
        else if (line.startsWith("data: ")) data = line.slice(6);
      }
      if (data === null) continue;
      if (id !== null && Number.isSafeInteger(id)) seen(id);
      let ev;
      try { ev = JSON.parse(data); } catch (_) { continue; }
      if (ev === null || typeof ev !== "object") continue;
      try { if (render(ev, view)) return "end"; }
      catch (e) { console.warn("event not shown", ev.type, e); }  // one odd event never stops the stream
    }
  }
}

// Waits ms, or less: the abort of a new conversation ends it (AbortError), a cancel wakes it (job.wake).
function sleep(ms, signal, job) {
  return new Promise((resolve, reject) => {
    const done = () => { clearTimeout(timer); signal.removeEventListener("abort", aborted); job.wake = null; };
    const aborted = () => { done(); reject(new DOMException("stopped following the run", "AbortError")); };
    const timer = setTimeout(() => { done(); resolve(); }, ms);
    job.wake = () => { done(); resolve(); };
    signal.addEventListener("abort", aborted);
  });
}

// The end of a run from the run object, when its terminal event cannot be had.
function showOutcome(run, v) {
  const status = str(run && run.status);
  if (status === "succeeded") { v.meta.className = "meta"; v.meta.textContent = "done"; return; }
  v.meta.className = "meta status-" + status;
  v.meta.textContent = status + (run && run.error && run.error.message ? ": " + str(run.error.message) : "");
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
    case "run.completed": v.meta.textContent = "done"; scrollDown(); return true;
    case "run.failed": case "run.timed_out": case "run.canceled":
      v.meta.className = "meta status-" + ev.type.slice(4);
      v.meta.textContent = ev.type.replace("run.", "") + (ev.message ? ": " + str(ev.message) : "");
      scrollDown();
      return true;
  }
  scrollDown();
  return false;
}

state.resume = viewInAddress();
if (state.resume) state.conversation = state.resume.c;

// An API key is printable ASCII: smart quotes, a no-break or zero-width space picked up with a paste made
// fetch() throw a browser error about ISO-8859-1 code points.
const KEY_CHARS = /^[\x21-\x7E]*$/;
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("api-key").value.trim();
  if (!KEY_CHARS.test(key)) {
    showError({ message: "This key has characters an API key cannot have (quotes, spaces or invisible characters?): paste it again." });
    return;
  }
  state.key = key;
  connect();
});
$("bundle").addEventListener("change", () => {
  const o = $("bundle").selectedOptions[0];
  $("bundle-desc").textContent = o ? o.dataset.desc : "";
});
// A new conversation stops following the current run; the run itself goes on on the server (as when the
// tab is closed; its approvals stay in the side bar). Cancel first to stop it.
function leaveConversation() {
  const job = state.current;
  state.current = null;
  if (job) job.abort.abort();
  state.conversation = newConversationId();
  $("messages").replaceChildren();
  showError(null);
  controls();
}
$("new-chat").addEventListener("click", () => {
  leaveConversation();
  state.resume = null;
  clearView();
});
// A link to a conversation (#c=…&r=…) opened in this tab: its run is shown (once a key is accepted, if none is
// yet). saveView and clearView replace the address without this event.
window.addEventListener("hashchange", () => {
  const back = viewInAddress();
  if (!back) return;  // emptied or mangled by hand: the view stays
  leaveConversation();
  state.conversation = back.c;
  if (state.connected) { state.resume = null; resume(back.r); } else state.resume = back;
});
$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.current || state.cannotStart) return;
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.isComposing || e.keyCode === 229) return;  // the Enter that confirms an IME composition: not a send
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("cancel").addEventListener("click", async () => {
  const job = state.current;
  if (!job || !job.run) return;
  try {
    job.canceled = await api(`/v1/runs/${encodeURIComponent(job.run)}/cancel`, { method: "POST" });
    if (job.wake) job.wake();  // cut off and waiting to reconnect: fetch run.canceled now, or show it if still cut off
  } catch (e) { showError(e); }
});
