// The side bar's pending approvals: paged in, kept in place, armed after a change, decided from the buttons.
import { api } from "./api.js";
import { refreshSide } from "./side.js";
import { state } from "./state.js";
import { $, el, showError, visible } from "./util.js";

// Every pending approval, a page at a time (newest first; next_before names the next page), up to
// APPROVAL_PAGES pages: more: there were more than that.
const APPROVAL_PAGES = 20, APPROVAL_PAGE = 500;
export async function pendingApprovals() {
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

// The pending approvals, oldest first, each item kept in place while it is pending: a new one is
// appended below, never pushed in above the one being read. Whenever the list changes, all its
// buttons wait ARM_MS before they take a click, so a click (or the second click of a double
// click) aimed at one approval cannot land on another that just moved under the pointer.
const ARM_MS = 600;
export function renderApprovals(items, more) {
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
export function setCannotDecide(on) {
  state.cannotDecide = on;
  $("approval-note").hidden = !on;
  if (on) for (const b of $("approvals").querySelectorAll("button")) b.disabled = true;
  else arm($("approvals"));
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
