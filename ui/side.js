// The side bar, asked again every POLL_MS while connected: pending approvals and budgets.
import { api } from "./api.js";
import { pendingApprovals, renderApprovals } from "./approvals.js";
import { state } from "./state.js";
import { $, el, visible } from "./util.js";

export async function refreshSide() {
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
