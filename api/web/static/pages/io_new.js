// Book an IO for a won deal: ad unit rows with free-slot hints, posted once with an Idempotency-Key.

import { all, api, app, day, empty, flashBox, h, isoDay, label, loading, lookups, money, mount, params, qs } from "../lib.js";

const PLACEMENTS = ["pre_roll", "mid_roll", "post_roll"];
const FORMATS = ["host_read", "produced"];
const INSERTIONS = ["baked_in", "dynamic"];
const DURATIONS = [15, 30, 45, 60, 75, 90, 105, 120];

/** crypto.randomUUID needs a secure context; fall back to getRandomValues elsewhere. */
function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((n) => n.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

const options = (values, selected) => values.map((v) => h("option", { value: v, selected: String(v) === String(selected) }, label(v)));
const field = (text, control, extra = {}) => h("label", { class: "field", ...extra }, h("span", {}, text), control);

export default async function ioNew() {
  const { deal_id: preselect } = params();
  const flash = flashBox();
  const body = h("div", {}, loading());
  mount(app(), h("p", { class: "crumbs" }, h("a", { href: "/ios" }, "← IOs")),
    h("div", { class: "page-head" }, h("h1", {}, "Book an IO")), flash, body);

  let deals, shows;
  try {
    [deals, { shows }] = await Promise.all([all("/api/v1/deals", { stage: "won" }, 5), lookups()]);
    if (preselect && !deals.some((d) => d.id === preselect)) {
      deals.unshift(await api(`/api/v1/deals/${encodeURIComponent(preselect)}`).catch(() => ({ id: preselect, name: preselect, stage: "unknown" })));
    }
  } catch (e) {
    mount(body, empty("The booking form could not be loaded."));
    return flash.show(e.message);
  }
  if (!deals.length) return mount(body, empty("No won deals yet: win a deal on the pipeline first, then book its IO here."));
  if (!shows.length) return mount(body, empty("No shows yet: import shows first."));

  const idempotencyKey = uuid(); // one per form: a retried submit cannot book twice
  const today = isoDay(new Date());
  const units = h("div", { class: "units" });
  const submit = h("button", { type: "submit" }, "Book IO");
  const form = h("form", { class: "card io-form", "data-testid": "io-form", novalidate: false },
    field("Won deal", h("select", { name: "campaign_id", required: true, "data-testid": "io-deal" },
      deals.map((d) => h("option", { value: d.id, selected: d.id === preselect },
        `${d.name} · ${money(d.value_usd)}${d.stage !== "won" ? ` (${d.stage})` : ""}`)))),
    h("h2", {}, "Ad units"), units,
    h("button", { type: "button", class: "secondary", "data-testid": "add-unit", onclick: () => addUnit() }, "+ Add unit"),
    h("details", { class: "more-options" }, h("summary", {}, "Promo code, vanity URL and terms"),
      h("div", { class: "grid-fields" },
        field("Promo code", h("input", { name: "promo_code", pattern: "[A-Za-z0-9][A-Za-z0-9\\-]{2,39}", placeholder: "generated if empty" })),
        field("Vanity path", h("input", { name: "vanity_path", placeholder: "generated if empty" })),
        field("Payment terms (days)", h("input", { name: "payment_terms_days", type: "number", min: 0, max: 365, value: "30" })),
        field("Under-delivery", h("select", { name: "underdelivery_policy" }, options(["makegood", "prorata"], "makegood"))),
        field("Measurement window (days)", h("input", { name: "measurement_window_days", type: "number", min: 0, max: 365, value: "30" })))),
    h("div", { class: "actions" }, submit));
  mount(body, form);
  addUnit();

  function addUnit() {
    const hints = h("div", { class: "slot-hints", "data-testid": "slot-hints", "aria-live": "polite" });
    const el = h("fieldset", { class: "unit", "data-testid": "unit-row" },
      h("legend", {}, "Unit"),
      h("div", { class: "grid-fields" },
        field("Show", h("select", { name: "show_id", required: true },
          h("option", { value: "" }, "Choose a show…"), shows.map((sh) => h("option", { value: sh.id }, sh.name)))),
        field("Placement", h("select", { name: "placement", required: true }, options(PLACEMENTS, "mid_roll"))),
        field("Format", h("select", { name: "format" }, options(FORMATS, "host_read"))),
        field("Insertion", h("select", { name: "insertion" }, options(INSERTIONS, "baked_in"))),
        field("Air date", h("input", { name: "air_date", type: "date", min: today, required: true })),
        field("Duration", h("select", { name: "duration_s" }, DURATIONS.map((d) => h("option", { value: d, selected: d === 30 }, `${d} s`)))),
        field("Pricing", h("select", { name: "pricing_model" }, options(["cpm", "flat"], "cpm"))),
        field("CPM (USD)", h("input", { name: "cpm_usd", type: "number", min: 0.01, step: 0.01, required: true }), { dataset: { pricing: "cpm" } }),
        field("Impressions goal", h("input", { name: "impressions_goal", type: "number", min: 1, step: 1, required: true }), { dataset: { pricing: "cpm" } }),
        field("Flat price (USD)", h("input", { name: "flat_usd", type: "number", min: 0.01, step: 0.01 }), { dataset: { pricing: "flat" } })),
      hints,
      h("button", { type: "button", class: "link remove", "data-testid": "remove-unit" }, "Remove unit"));
    const f = (name) => el.querySelector(`[name="${name}"]`);
    const pricing = () => {
      const model = f("pricing_model").value;
      el.querySelectorAll("[data-pricing]").forEach((lab) => {
        const on = lab.dataset.pricing === model;
        lab.hidden = !on;
        lab.querySelector("input").required = on;
      });
    };
    f("pricing_model").addEventListener("change", pricing);
    pricing();
    // Prefill the CPM from the show's rate card.
    f("show_id").addEventListener("change", () => {
      const rate = shows.find((x) => x.id === f("show_id").value)?.cpm_usd;
      if (rate && !f("cpm_usd").value) f("cpm_usd").value = rate;
    });
    let seq = 0;
    const refreshHints = async () => {
      const show = f("show_id").value, placement = f("placement").value, me = ++seq;
      if (!show || !placement) return mount(hints, h("span", { class: "muted small" }, "Choose a show to see its free slots."));
      mount(hints, h("span", { class: "muted small" }, "Checking free slots…"));
      try {
        const a = await api(`/api/v1/io/availability?${qs({ show_id: show, placement, start: today, days: 30 })}`);
        if (me === seq) renderHints(a);
      } catch (e) {
        if (me === seq) mount(hints, h("span", { class: "muted small" }, `Free slots unavailable: ${e.message}`));
      }
    };
    const renderHints = (a) => {
      const chosen = f("air_date").value;
      mount(hints,
        h("p", { class: "muted small" }, `Next 30 days · ${a.capacity} slot(s) a day · pick a free day:`),
        h("div", { class: "chips" }, a.days.map((d) => h("button", {
          type: "button", class: `chip${d.free > 0 ? " free" : " full"}${d.date === chosen ? " chosen" : ""}`,
          disabled: d.free <= 0, dataset: { date: d.date, free: d.free }, "aria-pressed": String(d.date === chosen),
          title: `${day(d.date)}: ${d.booked} booked, ${d.free} free`,
          onclick: () => { f("air_date").value = d.date; renderHints(a); },
        }, h("span", {}, day(d.date, { month: "short", day: "numeric" })), h("small", {}, d.free > 0 ? `${d.free} free` : "full")))));
      hints.lastAvailability = a;
    };
    f("show_id").addEventListener("change", refreshHints);
    f("placement").addEventListener("change", refreshHints);
    f("air_date").addEventListener("change", () => hints.lastAvailability && renderHints(hints.lastAvailability));
    el.querySelector(".remove").addEventListener("click", () => { el.remove(); numberUnits(); });
    units.append(el);
    numberUnits();
    // Start from the deal's own show, when it has one.
    const dealShow = deals.find((d) => d.id === form.elements.campaign_id.value)?.show_id;
    if (dealShow && shows.some((x) => x.id === dealShow)) {
      f("show_id").value = dealShow;
      f("show_id").dispatchEvent(new Event("change"));
    } else refreshHints();
  }

  function numberUnits() {
    const rows = [...units.children];
    rows.forEach((row, i) => {
      row.querySelector("legend").textContent = `Unit ${i + 1}`;
      row.querySelector(".remove").disabled = rows.length === 1;
    });
  }

  function payload() {
    const v = (name) => form.elements[name].value.trim();
    const body = {
      campaign_id: v("campaign_id"),
      ad_units: [...units.children].map((row) => {
        const g = (name) => row.querySelector(`[name="${name}"]`).value.trim();
        const unit = {
          show_id: g("show_id"), placement: g("placement"), format: g("format"), insertion: g("insertion"),
          air_date: g("air_date"), duration_s: Number(g("duration_s")), pricing_model: g("pricing_model"),
        };
        if (unit.pricing_model === "cpm") Object.assign(unit, { cpm_usd: g("cpm_usd"), impressions_goal: Number(g("impressions_goal")) });
        else unit.flat_usd = g("flat_usd");
        return unit;
      }),
      payment_terms_days: Number(v("payment_terms_days") || 30),
      underdelivery_policy: v("underdelivery_policy"),
      measurement_window_days: Number(v("measurement_window_days") || 30),
    };
    if (v("promo_code")) body.promo_code = v("promo_code");
    if (v("vanity_path")) body.vanity_path = v("vanity_path");
    return body;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!form.reportValidity()) return;
    submit.disabled = true;
    flash.clear();
    try {
      const io = await api("/api/v1/io", { method: "POST", body: payload(), headers: { "Idempotency-Key": idempotencyKey } });
      location.href = `/ios/${encodeURIComponent(io.id)}`;
    } catch (err) {
      submit.disabled = false;
      flash.show(err.message);
      flash.scrollIntoView({ behavior: "smooth", block: "nearest" });
    }
  });
}
