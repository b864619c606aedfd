// Insertion orders: the list and one IO (units, delivery, invoice, documents, cancel).

import {
  all, api, app, bar, dateTime, day, empty, flashBox, h, label, loading, money, money2, mount, num, params, plural, qs, statusBadge, thead, time,
} from "../lib.js";
import { eventItem } from "./events.js";

const CANCELLABLE = new Set(["scheduled", "live", "measuring"]);

export async function ioList() {
  const flash = flashBox();
  const tbody = h("tbody", {});
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const wrap = h("div", {}, loading());
  mount(app(),
    h("div", { class: "page-head" }, h("h1", {}, "Insertion orders"),
      h("a", { class: "button", href: "/ios/new", "data-testid": "book-io" }, "Book an IO")),
    flash, h("section", { class: "card" }, wrap, more));
  const table = h("div", { class: "table-wrap" }, h("table", { "data-testid": "io-list" },
    thead("Advertiser", "Status", "#Units", "#Total", "Next air date", "Booked"),
    tbody));
  let cursor = null;
  more.addEventListener("click", load);
  await load();

  async function load() {
    more.disabled = true;
    try {
      const page = await api(`/api/v1/io?${qs({ limit: 50, cursor })}`);
      for (const io of page.items) tbody.append(row(io));
      cursor = page.next_cursor;
      mount(wrap, tbody.children.length ? table : empty("No insertion orders yet. Book one for a won deal."));
    } catch (e) {
      if (!tbody.children.length) mount(wrap, empty("The IOs could not be loaded."));
      flash.show(e.message);
    }
    more.disabled = false;
    more.hidden = !cursor;
  }

  function row(io) {
    return h("tr", { "data-testid": "io-row", dataset: { ioId: io.id } },
      h("td", {}, h("a", { href: `/ios/${encodeURIComponent(io.id)}` }, io.advertiser_name),
        io.promo_code && h("span", { class: "muted small" }, ` · ${io.promo_code}`)),
      h("td", {}, statusBadge(io.status)),
      h("td", { class: "num" }, String(io.units)),
      h("td", { class: "num" }, money(io.total_usd)),
      h("td", {}, day(io.next_air_date)),
      h("td", {}, dateTime(io.created_at)));
  }
}

export async function ioDetail() {
  const { io_id: id } = params();
  const flash = flashBox();
  const body = h("div", {}, loading());
  mount(app(), h("p", { class: "crumbs" }, h("a", { href: "/ios" }, "← IOs")), flash, body);
  let shown = 0; // bumps so an older events read never paints over a newer render
  try {
    render(await api(`/api/v1/io/${encodeURIComponent(id)}`));
  } catch (e) {
    mount(body, empty(e.status === 404 ? "This IO does not exist." : "The IO could not be loaded."));
    flash.show(e.message);
  }

  function render(io) {
    const me = ++shown;
    // Filled from the IO's events once they are read: why it waits, and what happened when.
    const awaiting = h("section", { class: "card awaiting", "data-testid": "io-awaiting", role: "status", hidden: true });
    const activity = h("section", { class: "card", "data-testid": "io-activity" }, h("h2", {}, "Activity"), loading());
    const fact = (term, ...value) => h("div", {}, h("dt", {}, term), h("dd", {}, ...value));
    const doc = (format, text) => h("a", {
      class: "button secondary", "data-testid": `doc-${format}`, download: "",
      href: `/api/v1/io/${encodeURIComponent(io.id)}/document?format=${format}`,
    }, text);
    const dlv = io.delivery;
    mount(body,
      h("div", { class: "page-head" },
        h("h1", {}, io.advertiser_name, h("span", { class: "muted" }, ` · ${io.campaign_name}`)),
        statusBadge(io.status, { "data-testid": "io-status" })),
      h("section", { class: "card" },
        h("dl", { class: "facts" },
          fact("Total", h("strong", { "data-testid": "io-total" }, money2(io.total_usd))),
          fact("Promo code", io.promo_code ?? "—", io.promo_code_status && h("span", { class: "muted small" }, ` (${io.promo_code_status})`)),
          fact("Vanity URL", /^https?:\/\//.test(io.vanity_url || "") ? h("a", { href: io.vanity_url, target: "_blank", rel: "noopener" }, io.vanity_url) : io.vanity_url ?? "—"),
          fact("Next air date", day(io.next_air_date)),
          fact("Payment terms", `${io.payment_terms_days} days`),
          fact("Under-delivery", label(io.underdelivery_policy)),
          fact("Deal", h("a", { href: `/deals/${encodeURIComponent(io.campaign_id)}` }, io.campaign_name)),
          io.cancel_reason && fact("Cancelled", io.cancel_reason)),
        h("div", { class: "actions" }, doc("pdf", "IO as PDF"), doc("xlsx", "IO as Excel"),
          h("a", { href: io.temporal_ui_url, target: "_blank", rel: "noopener" }, "Workflow in Temporal UI"),
          CANCELLABLE.has(io.status) && !io.invoice && cancelControls(io))),
      awaiting,
      h("section", { class: "card", "data-testid": "io-delivery" },
        h("h2", {}, "Delivery"),
        dlv.impressions_goal
          ? h("div", {},
            h("p", {}, h("strong", {}, num(dlv.delivered_impressions)), ` of ${num(dlv.impressions_goal)} impressions delivered`,
              ` (${dlv.delivered_pct ?? 0}%)`, dlv.under_delivering ? h("span", { class: "badge warn" }, "under-delivering") : null),
            bar(dlv.delivered_impressions / dlv.impressions_goal, { class: "bar big" }))
          : h("p", { class: "muted" }, "No CPM units have aired yet.")),
      h("section", { class: "card" }, h("h2", {}, "Ad units"), h("div", { class: "table-wrap" },
        h("table", { "data-testid": "io-units" },
          thead("Show", "Placement", "Air date", "Status", "#Price", "#Goal", "#Delivered", "Delivery"),
          h("tbody", {}, io.ad_units.map((u) => h("tr", { dataset: { unitId: u.id } },
            h("td", {}, u.show_name, u.makegood_of && h("span", { class: "muted small" }, " (make-good)")),
            h("td", {}, label(u.placement), h("span", { class: "muted small" }, ` · ${label(u.format)}, ${label(u.insertion)}`)),
            h("td", {}, day(u.air_date)),
            h("td", {}, statusBadge(u.status)),
            h("td", { class: "num" }, money2(u.price_usd)),
            h("td", { class: "num" }, u.impressions_goal ? num(u.impressions_goal) : "—"),
            h("td", { class: "num" }, num(u.delivered_impressions)),
            h("td", {}, u.impressions_goal
              ? h("span", { class: "delivery" }, bar(u.delivered_impressions / u.impressions_goal, { title: `${u.delivered_pct ?? 0}% of goal` }),
                h("span", { class: "small" }, `${u.delivered_pct ?? 0}%`))
              : h("span", { class: "muted small" }, "flat")))))))),
      invoice(io),
      activity);
    if (io.status === "awaiting_delivery" && !io.invoice) showAwaiting(awaiting, io, null);
    loadActivity(io, me, awaiting, activity);
  }

  /** The IO's events, newest first; they also say which units an IO awaiting delivery waits for. */
  async function loadActivity(io, me, awaiting, activity) {
    let events;
    try {
      events = await all("/api/v1/events", { entity_id: io.id }, 5);
    } catch (e) {
      if (me !== shown) return;
      mount(activity, h("h2", {}, "Activity"), empty(`The IO's events could not be loaded: ${e.message}`));
      return;
    }
    if (me !== shown) return;
    const recent = events.slice(-25).reverse();
    mount(activity, h("h2", {}, "Activity"),
      recent.length ? h("ul", { class: "feed compact static", "data-testid": "io-events" }, recent.map(eventItem)) : empty("No events yet."),
      events.length > recent.length ? h("p", { class: "muted small" }, `The latest ${recent.length} of ${num(events.length)} events.`) : null);
    // A cancelled IO keeps its status while it waits for the report of what aired.
    const waits = !io.invoice && (io.status === "awaiting_delivery" || io.status === "cancelled");
    if (waits) showAwaiting(awaiting, io, overdueState(io, events));
  }

  function invoice(io) {
    const inv = io.invoice;
    if (!inv) return h("section", { class: "card", "data-testid": "io-invoice" }, h("h2", {}, "Invoice"), h("p", { class: "muted" }, "Not invoiced yet."));
    return h("section", { class: "card", "data-testid": "io-invoice" },
      h("h2", {}, `Invoice ${inv.number}`),
      h("p", { class: "muted" }, `Issued ${dateTime(inv.issued_at)} · due ${day(inv.due_date)} (${inv.payment_terms_days} days)`),
      h("div", { class: "table-wrap" }, h("table", {},
        thead("Show", "Placement", "Air date", "#Qty", "#Rate", "#Amount", "Note"),
        h("tbody", {}, inv.lines.map((l) => h("tr", {},
          h("td", {}, l.show_name), h("td", {}, label(l.placement)), h("td", {}, day(l.air_date)),
          h("td", { class: "num" }, num(l.quantity)), h("td", { class: "num" }, money2(l.rate_usd)),
          h("td", { class: "num" }, money2(l.amount_usd)), h("td", { class: "muted" }, l.note || "")))),
        h("tfoot", {}, h("tr", {}, h("th", { colspan: 5, scope: "row" }, "Total"), h("td", { class: "num" }, h("strong", {}, money2(inv.total_usd))), h("td", {}))))));
  }

  /**
   * What the IO waits for, from its events: the last io.delivery_overdue, the reminders since,
   * and its units no io.delivery_reported came for after it. Null when it waits for nothing.
   */
  function overdueState(io, events) {
    let overdue = null;
    let at = -1;
    events.forEach((e, i) => { if (e.type === "io.delivery_overdue") { overdue = e; at = i; } });
    if (!overdue) return null;
    const later = events.slice(at + 1);
    const reported = new Set(later.filter((e) => e.type === "io.delivery_reported").map((e) => e.payload?.ad_unit_id));
    const byId = new Map(io.ad_units.map((u) => [u.id, u]));
    const units = (overdue.payload?.units || []).filter((u) => !reported.has(u.ad_unit_id))
      .map((u) => ({ ...u, price_usd: byId.get(u.ad_unit_id)?.price_usd }));
    if (!units.length) return null;
    return {
      units,
      windowEndedAt: overdue.payload?.window_ended_at || overdue.occurred_at,
      reminderHours: overdue.payload?.reminder_hours,
      reminders: later.filter((e) => e.type === "io.delivery_reminder").length,
    };
  }

  /**
   * The window ended with CPM units nobody reported delivery for: say so, and let an operator
   * bill them as 0 or as their goal (close-delivery). `state` null: the events are not read yet
   * (or say nothing), so the units are the CPM ones that aired without a figure.
   */
  function showAwaiting(section, io, state) {
    if (state == null && io.status !== "awaiting_delivery") { section.hidden = true; return; }
    const units = state ? state.units : io.ad_units
      .filter((u) => u.impressions_goal && u.status === "aired" && !u.delivered_impressions)
      .map((u) => ({ ad_unit_id: u.id, show_name: u.show_name, air_date: u.air_date, impressions_goal: u.impressions_goal, price_usd: u.price_usd }));
    const goalUsd = units.reduce((sum, u) => sum + (Number(u.price_usd) || 0), 0);
    const windowText = io.measurement_window_days === 1 ? "1 day" : `${io.measurement_window_days} days`;
    mount(section,
      h("h2", {}, "Awaiting a delivery report"),
      h("p", {},
        `The measurement window (${windowText} after air) ended`,
        state ? [" ", time(state.windowEndedAt)] : "",
        ` and ${units.length ? plural(units.length, "CPM unit") : "a CPM unit"} ${units.length === 1 ? "has" : "have"} no delivery report,`,
        " so the IO is not invoiced yet. It reconciles as soon as a report arrives (the API or a deliveries import)."),
      state && h("p", { class: "muted small", "data-testid": "io-reminders" },
        state.reminders ? `${plural(state.reminders, "reminder")} sent` : "No reminder sent yet",
        state.reminderHours ? ` · a reminder every ${num(state.reminderHours)} hours` : ""),
      units.length > 0 && h("div", { class: "table-wrap" }, h("table", { class: "compact", "data-testid": "io-awaiting-units" },
        thead("Show", "Air date", "#Goal", "#Price"),
        h("tbody", {}, units.map((u) => h("tr", { dataset: { unitId: u.ad_unit_id } },
          h("td", {}, u.show_name), h("td", {}, day(u.air_date)),
          h("td", { class: "num" }, num(u.impressions_goal)), h("td", { class: "num" }, money2(u.price_usd))))))),
      h("p", { class: "muted small" }, "Or close it now and invoice: bill the unreported units as 0 impressions delivered, or as their goal delivered. Either way they are not made good."),
      h("div", { class: "actions" },
        closeButton(io, "zero", "Bill as delivered: 0",
          `Bill ${units.length === 1 ? "the unreported unit" : "the unreported units"} as 0 impressions delivered and invoice this IO now?`),
        closeButton(io, "goal", "Bill the goal",
          `Bill ${units.length === 1 ? "the unreported unit" : "the unreported units"} as ${units.length === 1 ? "its" : "their"} goal delivered${goalUsd ? ` (${money2(goalUsd)})` : ""} and invoice this IO now?`)));
    section.hidden = false;
  }

  function closeButton(io, billAs, text, question) {
    const btn = h("button", { type: "button", class: billAs === "goal" ? "" : "secondary", "data-testid": `io-close-delivery-${billAs}` }, text);
    btn.addEventListener("click", async () => {
      if (!confirm(question)) return;
      for (const b of btn.parentElement.querySelectorAll("button")) b.disabled = true;
      try {
        const closed = await api(`/api/v1/io/${encodeURIComponent(io.id)}/close-delivery`, { method: "POST", body: { bill_as: billAs } });
        render(closed);
        flash.show(closed.invoice
          ? `Closed: the unreported units were billed as ${billAs === "goal" ? "their goal" : "0"} delivered; invoice ${closed.invoice.number} issued.`
          : `Closed: the unreported units were billed as ${billAs === "goal" ? "their goal" : "0"} delivered.`, "ok", 8000);
        document.querySelector("[data-testid=io-invoice]")?.scrollIntoView({ behavior: "smooth", block: "start" });
      } catch (e) {
        for (const b of btn.parentElement?.querySelectorAll("button") || []) b.disabled = false;
        flash.show(e.message);
      }
    });
    return btn;
  }

  function cancelControls(io) {
    const reason = h("input", { name: "cancel_reason", placeholder: "Reason (optional)", maxlength: 2000, "aria-label": "Cancellation reason" });
    const btn = h("button", { type: "button", class: "danger", "data-testid": "io-cancel" }, "Cancel IO");
    btn.addEventListener("click", async () => {
      if (!confirm("Cancel this IO? Units that have not aired are released; aired ones are still billed.")) return;
      btn.disabled = true;
      try {
        render(await api(`/api/v1/io/${encodeURIComponent(io.id)}/cancel`, {
          method: "POST", body: { reason: reason.value.trim() || "Cancelled from the web app" },
        }));
        flash.show("The IO was cancelled.", "ok", 5000);
      } catch (e) {
        btn.disabled = false;
        flash.show(e.message);
      }
    });
    return h("span", { class: "cancel" }, reason, btn);
  }
}
