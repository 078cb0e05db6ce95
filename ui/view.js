// The conversation pane: turns, their bubbles, and each run event shown in its bubble.
import { refreshSide } from "./side.js";
import { state } from "./state.js";
import { $, el, str, visible } from "./util.js";

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
export function scrollDown(force) {
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
export function turn(text) {
  const user = addMessage("user", text);
  const bubble = addMessage("assistant");
  const thinking = el("div", "thinking"); thinking.hidden = true;
  const answer = el("div", "text answer");
  const meta = el("div", "meta");
  const conn = el("div", "conn", "reconnecting…"); conn.hidden = true;
  bubble.append(thinking, answer, meta, conn);
  return { user, thinking, answer, meta, conn, bubble };
}

// The end of a run from the run object, when its terminal event cannot be had.
export function showOutcome(run, v) {
  const status = str(run && run.status);
  if (status === "succeeded") { v.meta.className = "meta"; v.meta.textContent = "done"; return; }
  v.meta.className = "meta status-" + status;
  v.meta.textContent = status + (run && run.error && run.error.message ? ": " + str(run.error.message) : "");
}

// Returns true after the terminal event.
export function render(ev, v) {
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
