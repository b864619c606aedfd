// Insertion orders: the list and one IO (units, delivery, invoice, documents, cancel).

import {
  api, app, bar, dateTime, day, empty, flashBox, h, label, loading, money, money2, mount, num, params, qs, statusBadge, thead,
} from "../lib.js";

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
  try {
    render(await api(`/api/v1/io/${encodeURIComponent(id)}`));
  } catch (e) {
    mount(body, empty(e.status === 404 ? "This IO does not exist." : "The IO could not be loaded."));
    flash.show(e.message);
  }

  function render(io) {
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
          CANCELLABLE.has(io.status) && !io.invoice && cancelControls(io),
          io.status === "awaiting_delivery" && !io.invoice && closeDeliveryControls(io))),
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
      invoice(io));
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

  // The window ended with CPM units nobody reported delivery for: an operator may bill them as 0 or goal.
  function closeDeliveryControls(io) {
    const button = (billAs, text) => {
      const btn = h("button", { type: "button", class: "secondary", "data-testid": `io-close-delivery-${billAs}` }, text);
      btn.addEventListener("click", async () => {
        if (!confirm(`Close the missing delivery and invoice now, billing the unreported units as ${billAs === "goal" ? "their goal" : "0"} delivered?`)) return;
        btn.disabled = true;
        try {
          render(await api(`/api/v1/io/${encodeURIComponent(io.id)}/close-delivery`, { method: "POST", body: { bill_as: billAs } }));
          flash.show("The missing delivery was closed.", "ok", 5000);
        } catch (e) {
          btn.disabled = false;
          flash.show(e.message);
        }
      });
      return btn;
    };
    return h("span", { class: "close-delivery" }, h("span", { class: "muted small" }, "Awaiting a delivery report: "),
      button("zero", "Bill unreported as 0"), button("goal", "Bill unreported as goal"));
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
