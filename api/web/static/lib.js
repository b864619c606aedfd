// Shared helpers: DOM building, API calls, formatting, flash messages, the stage list.

export const STAGES = ["lead", "qualified", "proposal", "negotiation", "won", "lost"];
export const STAGE_COLORS = {
  lead: "#8fa3bf", qualified: "#4f83e0", proposal: "#7b5cd1",
  negotiation: "#d9912b", won: "#2f9a67", lost: "#cf4f59",
};
export const label = (s) => (s === "cpm" ? "CPM" : String(s ?? "").replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase()));

// ---- DOM -------------------------------------------------------------------------------

/** h("a", {href, class, dataset:{…}, onclick}, ...children): text children become text nodes. */
export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}
/** The same for SVG elements. */
export function s(tag, attrs = {}, ...children) {
  return build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);
}
function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.setAttribute("class", v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value" || k === "checked" || k === "selected" || k === "disabled") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}
function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}
/** Replaces an element's children. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}
export const app = () => document.getElementById("app");
export const params = () => {
  try { return JSON.parse(document.body.dataset.params || "{}"); } catch { return {}; }
};
/** <thead> from column titles; a leading "#" marks a right-aligned numeric column. */
export const thead = (...cols) => h("thead", {}, h("tr", {}, cols.map((c) =>
  c.startsWith("#") ? h("th", { scope: "col", class: "num" }, c.slice(1)) : h("th", { scope: "col" }, c))));
export const loading = (text = "Loading…") => h("p", { class: "loading" }, text);
export const empty = (text) => h("p", { class: "empty" }, text);

// ---- Flash (one per page, role=alert) ---------------------------------------------------

export function flashBox() {
  const el = h("div", { class: "flash", role: "alert", "data-testid": "flash", hidden: true });
  let timer;
  el.show = (message, kind = "error", ms = 0) => {
    clearTimeout(timer);
    el.className = `flash ${kind}`;
    // The close button draws its "×" in CSS, so the element's text is exactly the message.
    mount(el, h("span", {}, message),
      h("button", { type: "button", class: "flash-close", "aria-label": "Dismiss", title: "Dismiss", onclick: () => el.clear() }));
    el.hidden = false;
    if (ms) timer = setTimeout(() => el.clear(), ms);
  };
  el.clear = () => { el.hidden = true; el.replaceChildren(); };
  return el;
}

// ---- API -------------------------------------------------------------------------------

/** An error answer: `detail` as sent (a sentence, or a 422's list), `code` and `body` (its other fields). */
export class ApiError extends Error {
  constructor(status, message, detail, body) {
    super(message);
    this.status = status; this.detail = detail; this.body = body || null;
    this.code = (body && body.code) || null;
  }
}
export const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

export function signIn() {
  location.href = `/signin?next=${encodeURIComponent(location.pathname + location.search)}`;
}

/** A human message from an error body (api/errors.py): a sentence, or a 422 list ("field: msg"). */
export function errorText(data, status) {
  const d = data && data.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) {
    return d.map((e) => {
      const loc = (e.loc || []).filter((p) => p !== "body" && p !== "query").join(".");
      return loc ? `${loc}: ${e.msg}` : e.msg;
    }).join("; ");
  }
  return status ? `The server answered ${status}.` : "The server could not be reached.";
}

/** fetch() with the session cookie, CSRF header on writes, JSON in/out; throws ApiError. */
export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const opts = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (method !== "GET" && method !== "HEAD") opts.headers["X-CSRF-Token"] = csrf();
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["Content-Type"] = "application/json";
  }
  let res;
  try { res = await fetch(path, opts); } catch {
    throw new ApiError(0, "Network error: the server could not be reached. Check your connection and retry.");
  }
  if (res.status === 401) { signIn(); throw new ApiError(401, "Your session ended; signing in again…"); }
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, errorText(data, res.status), data && data.detail, data);
  return data;
}

export const qs = (o) => new URLSearchParams(Object.entries(o).filter(([, v]) => v != null && v !== "")).toString();

/** Every page of a list (capped), e.g. all shows for a select. */
export async function all(path, query = {}, maxPages = 10) {
  const items = [];
  let cursor = null;
  for (let i = 0; i < maxPages; i++) {
    const page = await api(`${path}?${qs({ ...query, limit: 200, cursor })}`);
    items.push(...page.items);
    if (!(cursor = page.next_cursor)) break;
  }
  return items;
}

// Shows and advertisers by id, fetched once per page load.
let catalog;
export function lookups() {
  catalog ||= Promise.all([all("/api/v1/shows"), all("/api/v1/advertisers")]).then(([shows, advertisers]) => ({
    shows, advertisers,
    show: new Map(shows.map((x) => [x.id, x])),
    advertiser: new Map(advertisers.map((x) => [x.id, x])),
  })).catch((e) => { catalog = null; throw e; });
  return catalog;
}

// ---- Formatting ------------------------------------------------------------------------

const usd0 = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumFractionDigits: 0 });
const usd2 = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
export const money = (v) => (v == null ? "—" : usd0.format(Number(v)));
export const money2 = (v) => (v == null ? "—" : usd2.format(Number(v)));
export function moneyShort(v) {
  const n = Math.abs(v);
  if (n >= 1e6) return `$${+(v / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `$${+(v / 1e3).toFixed(1)}k`;
  return `$${Math.round(v)}`;
}
export const num = (v) => (v == null ? "—" : Number(v).toLocaleString("en-US"));
export const pct = (v01) => (v01 == null ? "—" : `${Math.round(v01 * 1000) / 10}%`);

/** "2026-12-01" as a local calendar date (no time-zone shift). */
export function day(iso, opts = { year: "numeric", month: "short", day: "numeric" }) {
  if (!iso) return "—";
  const [y, m, d] = String(iso).slice(0, 10).split("-").map(Number);
  return new Date(y, m - 1, d).toLocaleDateString(undefined, opts);
}
export const dateTime = (iso) => (iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "—");
export const time = (iso, text) => h("time", { datetime: iso }, text ?? dateTime(iso));
export function isoDay(d) {
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}
export const stageBadge = (stage, attrs = {}) => h("span", { class: `badge stage-${stage}`, ...attrs }, stage);
export const statusBadge = (status, attrs = {}) => h("span", { class: `badge status-${status}`, ...attrs }, status);

/** A small horizontal bar: fill = share (0..1, capped at 1). */
export function bar(share, attrs = {}) {
  const w = Math.max(0, Math.min(1, Number(share) || 0)) * 100;
  return h("span", { class: "bar", ...attrs }, h("span", { class: "bar-fill", style: { width: `${w}%` } }));
}

/** "3 units" / "1 unit". */
export const plural = (n, one, many = `${one}s`) => `${num(n)} ${Number(n) === 1 ? one : many}`;

/** The units an io.delivery_overdue/io.delivery_reminder names: "2 units (Morning Brew Jan 5, Night Owls Jan 6)". */
function overdueUnits(units) {
  const list = Array.isArray(units) ? units : [];
  const names = list.slice(0, 3).map((u) => `${u.show_name} ${day(u.air_date, { month: "short", day: "numeric" })}`);
  if (list.length > 3) names.push(`${list.length - 3} more`);
  return `${plural(list.length, "unit")}${names.length ? ` (${names.join(", ")})` : ""}`;
}

/** One line about an event's payload, e.g. "lead → qualified". */
export function eventSummary(e) {
  const p = e.payload || {};
  switch (e.type) {
    case "deal.stage_changed": return `${p.from ?? "—"} → ${p.to}${p.reason ? ` (${p.reason})` : ""}`;
    case "deal.created": return `${p.name ?? "deal"} · ${p.stage} · ${money(p.value_usd)}${p.import_id ? " · imported" : ""}`;
    case "deal.stalled": return `stalled in ${p.stage} (limit ${p.limit_days} days)`;
    case "io.scheduled": return `${p.units} unit(s) · ${money(p.total_usd)} · first air ${day(p.first_air_date)}`;
    case "io.ad_aired": return `${p.show_name} · ${label(p.placement)} aired ${day(p.air_date)}`;
    case "io.delivery_reported":
      return `${num(p.impressions)} of ${num(p.impressions_goal)} impressions`
        + (p.billed_as ? ` · closed by an operator: billed as ${p.billed_as === "goal" ? "the goal" : "0"} delivered` : "");
    case "io.makegood_scheduled": return `make-good on ${p.show_name} ${day(p.air_date)} (${num(p.shortfall)} short)`;
    case "io.delivery_overdue":
      return `no delivery report for ${overdueUnits(p.units)} when the measurement window ended ${dateTime(p.window_ended_at)}; not invoiced until reported or closed`
        + (p.reminder_hours ? ` (reminders every ${num(p.reminder_hours)} h)` : "");
    case "io.delivery_reminder":
      return `reminder ${num(p.reminder)}: still no delivery report for ${overdueUnits(p.units)} (window ended ${dateTime(p.window_ended_at)})`;
    case "io.completed":
      return `invoice ${p.invoice_number} · ${money(p.total_usd)}${p.due_date ? ` · due ${day(p.due_date)}` : ""}${p.cancelled ? " (cancelled)" : ""}`;
    case "io.cancelled":
      return `cancelled: ${p.reason ?? ""}${Array.isArray(p.cancelled_units) ? ` (${plural(p.cancelled_units.length, "unit")} released)` : ""}`;
    case "etl.import_completed": {
      const wf = p.workflows_to_start
        ? `; ${num(p.workflows_started)} of ${num(p.workflows_to_start)} deal workflows started` : "";
      return `${p.filename}: ${p.status}, ${num(p.rows_inserted)} new, ${num(p.rows_updated)} updated, ${num(p.rows_failed)} failed${wf}`;
    }
    case "etl.error": return `${p.filename}: ${p.status ? `${p.status}: ` : ""}${p.reason ?? "failed"}`;
    case "match.recalculated": return `${num(p.matches_written)} matches from ${num(p.pairs_scored)} pairs${p.trigger ? ` (${p.trigger})` : ""}`;
    case "webhook.test": return `webhook test: ${p.message ?? "a test event"}`;
    case "webhook.disabled":
      return `webhook paused: ${p.reason ?? "every attempt failed"}${p.failing_since ? ` (failing since ${dateTime(p.failing_since)})` : ""}`;
    default:
      return Object.entries(p).slice(0, 3).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
  }
}
/** Where an event's entity lives in the app. */
export function entityHref(e) {
  if (e.entity_type === "deal") return `/deals/${encodeURIComponent(e.entity_id)}`;
  if (e.entity_type === "io") return `/ios/${encodeURIComponent(e.entity_id)}`;
  if (e.entity_type === "import") return "/imports";
  if (e.entity_type === "tenant") return "/matches";
  return null;
}
export const link = (href, ...children) => h("a", { href }, ...children);
