// Stockade web UI: chat with a bundle over the REST API and the SSE stream.
// EventSource cannot send an Authorization header, so the stream is read with fetch().
// Everything shown comes from tenants, bundles, tools or LLMs: it goes into the page as text
// (textContent, never innerHTML; the CSP's Trusted Types refuse any string assigned as HTML).
// This module wires the page's controls; the rest is split by concern (ES modules, all in ui/, see README.md).
import { api } from "./api.js";
import { clearView, leaveConversation, resume, send, viewInAddress } from "./chat.js";
import { connect } from "./connect.js";
import { controls, state } from "./state.js";
import { $, showError } from "./util.js";

// The API key lives in this page's memory only: any page of the origin reads localStorage and
// sessionStorage, and /docs runs a CDN's script. Earlier versions stored it there: gone on load.
localStorage.removeItem("stockade.key");

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
  $("input").focus();  // Send clicked: the button is disabled while the run goes on, which left the focus nowhere
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.isComposing || e.keyCode === 229) return;  // the Enter that confirms an IME composition: not a send
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("cancel").addEventListener("click", async () => {
  const job = state.current;
  // one cancel per run: a double click asked twice, and the second got run.not_cancelable as an error
  if (!job || !job.run || job.canceling) return;
  job.canceling = true;
  $("cancel").disabled = true;
  try {
    job.canceled = await api(`/v1/runs/${encodeURIComponent(job.run)}/cancel`, { method: "POST" });
    if (job.wake) job.wake();  // cut off and waiting to reconnect: fetch run.canceled now, or show it if still cut off
  } catch (e) {
    job.canceling = false;
    if (state.current === job) controls();  // refused: Cancel can be pressed again
    showError(e);
  }
});
