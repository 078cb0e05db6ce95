// Connect: what the key is (GET /v1/me), the bundles it may run, then the side bar's polling.
import { api } from "./api.js";
import { setCannotDecide } from "./approvals.js";
import { clearView, leaveConversation, resume } from "./chat.js";
import { refreshSide } from "./side.js";
import { POLL_MS, setCannotStart, setWhoami, state, stopPolling } from "./state.js";
import { $, el, showError, visible } from "./util.js";

// Two Connects may be in flight (a double click, another key pasted): only the latest one's answers count, so
// an earlier key's late /v1/me never labels the page, and only one poll ever runs.
export async function connect() {
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
