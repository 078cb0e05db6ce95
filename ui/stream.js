// A run's SSE stream, read with fetch() (EventSource cannot send an Authorization header), resumed with
// Last-Event-ID after a drop until the run's end.
import { api, httpError, readBody } from "./api.js";
import { state } from "./state.js";
import { render, showOutcome } from "./view.js";

// Reconnecting after a dropped or failed connection: 0.5 s, doubling up to 5 s; back to 0.5 s once events
// flow again. Runs outlive connections (a server restart included), so it keeps trying until the run's
// terminal event, a refusal that retrying cannot change (401, 403, 404, ...), a cancel, or a new conversation.
const RETRY_MIN_MS = 500, RETRY_MAX_MS = 5000;

export async function stream(runId, view, job) {
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
