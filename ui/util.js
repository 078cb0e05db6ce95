// Small helpers every module uses: the page's elements, values as display text, error display.
// Everything shown comes from tenants, bundles, tools or LLMs: it goes into the page as text (textContent).

export const $ = (id) => document.getElementById(id);

// Any JSON value as display text: an event's fields are whatever the bundle put there.
export function str(v) { return v === undefined || v === null ? "" : typeof v === "string" ? v : JSON.stringify(v); }

// For what an approver decides on: invisible and direction-changing characters (zero-width,
// bidi overrides and isolates, other format and control characters) shown as \u{…} escapes,
// so that "\u202Egnp.exe" cannot pass for "exe.png" and nothing hides inside the arguments.
const HIDDEN = /[\u0000-\u0008\u000B-\u001F\u007F-\u009F\u00AD\u061C\u115F\u1160\u180E\u200B-\u200F\u202A-\u202E\u2060-\u206F\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF9-\uFFFB]|\uDB40[\uDC00-\uDDEF]/g;
export function visible(v) {
  return str(v).replace(HIDDEN, (c) => "\\u{" + c.codePointAt(0).toString(16).toUpperCase() + "}");
}

export function newConversationId() { return "ui-" + Math.random().toString(36).slice(2, 12); }

export function showError(e) { $("error").textContent = e ? (e.code ? e.code + ": " : "") + e.message : ""; }

export function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}
