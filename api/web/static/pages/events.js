// Live event feed over Server-Sent Events, newest first, with type filter chips.

import { api, app, dateTime, entityHref, eventSummary, h, mount, time } from "../lib.js";

const GROUPS = { all: "All", deal: "Deals", io: "IOs", etl: "Imports", match: "Matches" };
const MAX = 500;

/** One event as a list item (also used by the dashboard). */
export function eventItem(e) {
  const href = entityHref(e);
  const entity = `${e.entity_type} ${String(e.entity_id).slice(0, 8)}`;
  return h("li", { class: "event", dataset: { eventId: e.id, type: e.type, group: e.type.split(".")[0] } },
    h("span", { class: `badge type-${e.type.split(".")[0]}` }, e.type),
    h("span", { class: "summary" }, eventSummary(e)),
    h("span", { class: "muted small" }, href ? h("a", { href }, entity) : entity, " · ", time(e.occurred_at, dateTime(e.occurred_at))));
}

export default function events() {
  const status = h("span", { class: "conn connecting", "data-testid": "stream-status", role: "status" }, "connecting…");
  const feed = h("ul", { class: "feed", "data-testid": "event-feed" });
  const none = h("p", { class: "empty" }, "No events yet. They appear here as deals move, IOs air and imports finish.");
  let filter = "all";
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Filter by type" }, Object.entries(GROUPS).map(([g, text]) =>
    h("button", { type: "button", class: "chip", "aria-pressed": String(g === filter), dataset: { group: g }, onclick: () => setFilter(g) },
      text)));
  mount(app(), h("div", { class: "page-head" }, h("h1", {}, "Events"), status), chips, none, feed);

  const seen = new Set();
  const source = new EventSource("/api/v1/events/stream");
  source.addEventListener("open", () => setStatus("live", "live"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setStatus("down", "disconnected");
      api("/api/v1/events?limit=1").catch(() => {}); // a 401 here sends the browser to sign-in
    } else setStatus("connecting", "reconnecting…");
  });
  source.addEventListener("message", (msg) => {
    let e;
    try { e = JSON.parse(msg.data); } catch { return; }
    if (!e || seen.has(e.id)) return; // a reconnect replays the latest events
    seen.add(e.id);
    add(e);
  });
  addEventListener("pagehide", () => source.close());
  addEventListener("pageshow", (e) => { if (e.persisted) location.reload(); }); // back from bfcache: reconnect

  /** Inserts newest first by id (numeric ids; falls back to arrival order). */
  function add(e) {
    const li = eventItem(e);
    li.hidden = filter !== "all" && li.dataset.group !== filter;
    const key = Number(e.id);
    const after = [...feed.children].find((c) => Number(c.dataset.eventId) < key);
    feed.insertBefore(li, Number.isNaN(key) ? feed.firstChild : after || null);
    while (feed.children.length > MAX) feed.lastChild.remove();
    none.hidden = true;
  }

  function setFilter(g) {
    filter = g;
    chips.querySelectorAll(".chip").forEach((c) => c.setAttribute("aria-pressed", String(c.dataset.group === g)));
    for (const li of feed.children) li.hidden = g !== "all" && li.dataset.group !== g;
  }

  function setStatus(cls, text) {
    status.className = `conn ${cls}`;
    status.textContent = text;
  }
}
