// Dashboard: one card per block of GET /api/v1/dashboard, charts drawn by hand in SVG.

import {
  STAGES, STAGE_COLORS, api, app, bar, day, empty, flashBox, h, label, loading, money, moneyShort, mount, num, pct, s,
  stageBadge, statusBadge, thead,
} from "../lib.js";
import { eventItem } from "./events.js";

export default async function dashboard() {
  const flash = flashBox();
  const windowSel = h("select", { "data-testid": "window-days", "aria-label": "Window" },
    [30, 90, 180, 365].map((d) => h("option", { value: d, selected: d === 90 }, `Last ${d} days`)));
  const asOf = h("span", { class: "muted small" });
  const grid = h("div", { class: "dash" }, loading());
  mount(app(), h("div", { class: "page-head" }, h("h1", {}, "Dashboard"), h("div", { class: "row" }, windowSel, asOf)), flash, grid);
  windowSel.addEventListener("change", load);
  await load();

  async function load() {
    try {
      const d = await api(`/api/v1/dashboard?window_days=${windowSel.value}`);
      asOf.textContent = `as of ${new Date(d.as_of).toLocaleString()}`;
      mount(grid, pipelineCard(d), winRateCard(d.win_rate, d.window_days), movementCard(d.stage_movement),
        stalledCard(d.stalled), airDatesCard(d.upcoming_air_dates), underdeliveryCard(d.underdelivering),
        matchesCard(d.top_matches), importsCard(d.latest_imports), eventsCard(d.latest_events));
      flash.clear();
    } catch (e) {
      if (grid.querySelector(".loading")) mount(grid, empty("The dashboard could not be loaded."));
      flash.show(e.message);
    }
  }
}

const card = (id, title, ...body) =>
  h("section", { class: `card card-${id}`, "data-testid": `card-${id}`, "aria-labelledby": `h-${id}` },
    h("h2", { id: `h-${id}` }, title), ...body);
const list = (items, render, none) => (items.length ? h("ul", { class: "list" }, items.map((x) => h("li", {}, render(x)))) : empty(none));
const more = (count, shown, href, text) => (count > shown ? h("p", { class: "small" }, h("a", { href }, `${text} (${num(count)})`)) : null);

// ---- Pipeline: grouped bars (value, weighted) per stage ---------------------------------------

function pipelineCard(d) {
  const op = d.open_pipeline;
  return card("pipeline", "Pipeline",
    h("p", { class: "kpis" },
      kpi(num(op.count), "open deals"), kpi(money(op.value_usd), "open value"), kpi(money(op.weighted_value_usd), "weighted")),
    pipelineChart(d.pipeline),
    h("ul", { class: "legend" }, h("li", {}, swatch("var(--c-value)"), "Value"), h("li", {}, swatch("var(--c-weighted)"), "Weighted value")),
    h("details", {}, h("summary", {}, "Table"),
      h("table", { class: "compact" },
        thead("Stage", "#Deals", "#Value", "#Weighted"),
        h("tbody", {}, d.pipeline.map((p) => h("tr", {}, h("td", {}, label(p.stage)), h("td", { class: "num" }, num(p.count)),
          h("td", { class: "num" }, money(p.value_usd)), h("td", { class: "num" }, money(p.weighted_value_usd))))))));
}
const kpi = (value, text) => h("span", { class: "kpi" }, h("strong", {}, value), h("small", {}, text));
const swatch = (color) => h("span", { class: "swatch", style: { background: color } });

const W = 560, H = 220, PAD = { l: 58, r: 8, t: 12, b: 28 };

/** Y axis with up to 5 gridlines from 0 to a round maximum; returns [group, scale(v) → y]. */
function yAxis(max, fmt) {
  const step = niceStep(max / 5), n = Math.max(1, Math.ceil(max / step));
  const top = step * n;
  const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - v / top);
  const g = s("g", { class: "axis" });
  for (let i = 0; i <= n; i++) {
    const v = step * i;
    g.append(s("line", { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v) }),
      s("text", { x: PAD.l - 6, y: y(v) + 4, "text-anchor": "end" }, fmt(v)));
  }
  return [g, y];
}
function niceStep(raw) {
  if (!(raw > 0)) return 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * mag).find((x) => x >= raw);
}
function chart(testid, title, desc, ...children) {
  return s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "data-testid": testid, "aria-label": `${title}. ${desc}` },
    s("title", {}, title), s("desc", {}, desc), ...children);
}

function pipelineChart(rows) {
  const max = Math.max(1, ...rows.map((r) => r.value_usd));
  const [axis, y] = yAxis(max, moneyShort);
  const slot = (W - PAD.l - PAD.r) / rows.length, bw = Math.min(28, slot / 3);
  const bars = rows.map((r, i) => {
    const x = PAD.l + slot * i + slot / 2;
    const rect = (v, dx, cls, what) => s("rect", { x: x + dx, y: y(v), width: bw, height: Math.max(0, y(0) - y(v)), class: cls, rx: 2 },
      s("title", {}, `${label(r.stage)}: ${what} ${money(v)} (${num(r.count)} deals)`));
    return s("g", {}, rect(r.value_usd, -bw - 1, "b-value", "value"), rect(r.weighted_value_usd, 1, "b-weighted", "weighted"),
      s("text", { x, y: H - 8, "text-anchor": "middle", class: "xlabel long" }, label(r.stage)),
      s("text", { x, y: H - 8, "text-anchor": "middle", class: "xlabel short", "aria-hidden": "true" }, label(r.stage).slice(0, 4)));
  });
  const desc = rows.map((r) => `${r.stage} ${r.count} deals, ${money(r.value_usd)} (weighted ${money(r.weighted_value_usd)})`).join("; ");
  return chart("chart-pipeline", "Pipeline value by stage", desc, axis, ...bars);
}

// ---- Stage movement: stacked weekly bars -------------------------------------------------------

function movementCard(m) {
  const weeks = m.weeks || [];
  const totals = weeks.map((_, i) => STAGES.reduce((acc, st) => acc + (m.series[st]?.[i] || 0), 0));
  const [axis, y] = yAxis(Math.max(4, ...totals), (v) => String(Math.round(v)));
  const slot = (W - PAD.l - PAD.r) / Math.max(1, weeks.length), bw = slot * 0.62;
  const cols = weeks.map((wk, i) => {
    const x = PAD.l + slot * i + (slot - bw) / 2;
    let acc = 0;
    const segs = STAGES.map((st) => {
      const v = m.series[st]?.[i] || 0;
      if (!v) return null;
      const seg = s("rect", { x, y: y(acc + v), width: bw, height: y(acc) - y(acc + v), fill: STAGE_COLORS[st] },
        s("title", {}, `Week of ${day(wk)}: ${v} entered ${st}`));
      acc += v;
      return seg;
    });
    return s("g", {}, ...segs, i % 2 === 0 || weeks.length <= 6
      ? s("text", { x: x + bw / 2, y: H - 8, "text-anchor": "middle", class: "xlabel" }, day(wk, { month: "short", day: "numeric" })) : null);
  });
  const desc = `Deals entering each stage per week, ${weeks.length} weeks: ` +
    STAGES.map((st) => `${st} ${(m.series[st] || []).reduce((a, b) => a + b, 0)}`).join(", ");
  return card("movement", "Stage movement (weekly)",
    weeks.length ? chart("chart-movement", "Weekly stage entries", desc, axis, ...cols) : empty("No movement yet."),
    h("ul", { class: "legend" }, STAGES.map((st) => h("li", {}, swatch(STAGE_COLORS[st]), label(st)))));
}

// ---- The other cards -------------------------------------------------------------------------

function winRateCard(w, days) {
  return card("winrate", "Win rate",
    h("p", { class: `big-number${w.rate == null ? " none" : ""}`, "data-testid": "win-rate" }, w.rate == null ? "—" : pct(w.rate)),
    h("p", { class: "muted" }, `${num(w.won)} won · ${num(w.lost)} lost in the last ${days} days`),
    h("p", {}, w.avg_days_to_close == null ? "No deals closed yet." : `Average ${Math.round(w.avg_days_to_close * 10) / 10} days to close`));
}

function stalledCard(st) {
  return card("stalled", `Stalled deals (${num(st.count)})`,
    list(st.items, (x) => [
      h("a", { href: `/deals/${encodeURIComponent(x.id)}` }, x.name), " ", stageBadge(x.stage),
      h("p", { class: "muted small" }, `${x.advertiser_name ?? ""} · ${money(x.value_usd)} · ${x.days_in_stage} days (limit ${x.stall_limit_days})`),
    ], "Nothing stalled."),
    more(st.count, st.items.length, "/board", "All on the pipeline"));
}

function airDatesCard(a) {
  return card("airdates", `Upcoming air dates (${num(a.count)})`,
    list(a.items, (x) => [
      h("a", { href: `/ios/${encodeURIComponent(x.io_id)}` }, `${day(x.air_date)} · ${x.show_name}`),
      h("p", { class: "muted small" }, `${x.advertiser_name} · ${label(x.placement)} · ${x.status}`),
    ], "No ads scheduled."),
    more(a.count, a.items.length, "/ios", "All IOs"));
}

function underdeliveryCard(u) {
  return card("underdelivery", `Under-delivering (${num(u.count)})`,
    list(u.items, (x) => [
      h("a", { href: `/ios/${encodeURIComponent(x.io_id)}` }, x.advertiser_name), " ", statusBadge(x.status),
      h("div", { class: "delivery" }, bar(x.delivery_pct), h("span", { class: "small" }, pct(x.delivery_pct))),
      h("p", { class: "muted small" }, `${num(x.delivered_impressions)} of ${num(x.impressions_goal)} impressions`),
    ], "Every IO is on track."));
}

function matchesCard(items) {
  return card("matches", "Top matches",
    list(items, (x) => [
      h("a", { href: `/matches?advertiser_id=${encodeURIComponent(x.advertiser_id)}` }, `${x.advertiser_name} → ${x.show_name}`),
      h("span", { class: "score-pill" }, String(Math.round(x.score))),
    ], "No matches yet."));
}

function importsCard(items) {
  return card("imports", "Latest imports",
    list(items, (x) => [
      h("a", { href: "/imports" }, x.filename), " ", statusBadge(x.status),
      h("p", { class: "muted small" }, `${label(x.kind)} · ${num(x.rows_processed)} rows, ${num(x.rows_failed)} failed · ${new Date(x.created_at).toLocaleString()}`),
    ], "No imports yet."));
}

function eventsCard(items) {
  return card("events", "Latest events",
    items.length ? h("ul", { class: "feed compact" }, items.map(eventItem)) : empty("No events yet."),
    h("p", { class: "small" }, h("a", { href: "/events" }, "Live feed →")));
}
