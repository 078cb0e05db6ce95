// Sending a message, following its run into its bubble, the conversation kept in the address and resumed.
import { api } from "./api.js";
import { refreshSide } from "./side.js";
import { controls, setCannotStart, state } from "./state.js";
import { stream } from "./stream.js";
import { $, newConversationId, showError, str } from "./util.js";
import { showOutcome, turn } from "./view.js";

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
  catch (e) { if (!job.abort.signal.aborted) { showError(e); interrupted(view, e); } }
  finally { view.conn.hidden = true; }
}

// The stream was refused for good before the run's end (the key revoked while it streamed: the server closes
// the stream at its next key re-check, and the reconnection gets 401): the bubble ends, saying why, rather
// than staying as it was mid-answer. The run itself goes on on the server.
function interrupted(view, e) {
  view.meta.className = "meta status-interrupted";
  view.meta.textContent = "interrupted: " + (e.status === 401 ? "this key no longer works" : str(e.message))
    + (e.code ? " (" + e.code + ")" : "");
}

// The text stays in the box until its run is created: a refused (422, 403) or lost send takes its bubbles
// back and leaves the text to send again.
export async function send(text) {
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
export function clearView() { history.replaceState(null, "", location.pathname + location.search); }
export function viewInAddress() {
  const p = new URLSearchParams(location.hash.slice(1));
  const c = p.get("c"), r = p.get("r");
  return c && r && CONVERSATION.test(c) && ID.test(r) ? { c, r } : null;
}

export async function resume(runId) {
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

// A new conversation stops following the current run; the run itself goes on on the server (as when the
// tab is closed; its approvals stay in the side bar). Cancel first to stop it.
export function leaveConversation() {
  const job = state.current;
  state.current = null;
  if (job) job.abort.abort();
  state.conversation = newConversationId();
  $("messages").replaceChildren();
  showError(null);
  controls();
}
