// The REST API with the key in use; its problem documents as errors (code, status, detail).
import { keyRejected, state } from "./state.js";
import { str } from "./util.js";

export async function api(path, opts = {}) {
  const key = state.key;
  const headers = Object.assign({ Authorization: "Bearer " + key }, opts.headers || {});
  if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  const body = await readBody(r);
  if (!r.ok) throw httpError(r, body, key);
  return body;
}

export async function readBody(r) {
  const text = await r.text();
  try { return text ? JSON.parse(text) : null; } catch (_) { return text; }
}

// The problem document's code and detail; a 401 for the key in use means it no longer works at all.
export function httpError(r, body, key) {
  const err = new Error(str((body && body.detail) || r.statusText || "HTTP " + r.status));
  err.code = body && typeof body.code === "string" ? body.code : undefined; err.status = r.status;
  if (r.status === 401 && key === state.key) keyRejected();
  return err;
}
