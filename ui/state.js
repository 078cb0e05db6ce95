// The page's state (the key, the connection, the run followed) and what changes with it: the header, the
// polling, which controls a key is offered.
import { $, newConversationId } from "./util.js";

// current: the run being followed - { abort, run, canceled, wake } - from Send until its end, or until
// "New conversation" stops following it. connected: the key was accepted and has not been refused since.
// resume: the conversation and run a reload (or a link opened while not connected) left in the address, shown
// once a key is accepted. gen: the number of the latest Connect (an earlier one's answers are then ignored).
// accepted: the last key /v1/me accepted; me: its answer (role, key id, what it may do).
export const state = { key: "", connected: false, conversation: newConversationId(), current: null, poll: null, cannotDecide: false,
  cannotStart: false, resume: null, gen: 0, accepted: "", me: null };
export const POLL_MS = 3000;

export function stopPolling() { clearInterval(state.poll); state.poll = null; }

export function setWhoami(text, bad) { $("whoami").textContent = text; $("whoami").classList.toggle("bad", bad); }

// The server refused the key (revoked, or never valid): say so and stop asking with it every few seconds.
export function keyRejected() {
  stopPolling();
  if (!state.connected) return;  // connect() shows its own error
  state.connected = false;
  setWhoami("disconnected — key rejected", true);
}

// A key that may not start runs (GET /v1/me at connect; or the first run refused for it: auth.forbidden) is
// offered neither Send nor Cancel, with a note.
export function setCannotStart(on) {
  state.cannotStart = on;
  $("send-note").hidden = !on;
  controls();
}

// Send while no run is followed, Cancel while one is; neither for a key that cannot start runs.
export function controls() {
  $("send").disabled = Boolean(state.current) || state.cannotStart;
  $("cancel").disabled = !(state.current && state.current.run) || state.cannotStart;
}
