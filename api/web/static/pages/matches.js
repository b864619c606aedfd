// Matches: an advertiser's best shows, the score and its six signals, the rationale; recalculation.

import { all, api, app, dateTime, empty, flashBox, h, loading, lookups, mount, num, params, qs } from "../lib.js";

const SIGNALS = [["geo", "Geo"], ["demographic", "Demographic"], ["topic", "Topic"], ["lift", "Lift"],
  ["inventory", "Inventory"], ["brand_safety", "Brand safety"]];

/** A labelled bar whose fill (the element with the testid) is value*100% wide. */
function meter(value01, text, testid, cls = "") {
  const v = Math.round(Math.max(0, Math.min(1, value01)) * 1000) / 10;
  return h("div", { class: `meter ${cls}` },
    h("div", {
      class: "meter-fill", "data-testid": testid, style: { width: `${v}%` }, role: "meter",
      "aria-label": text, "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": v, title: `${text}: ${v}`,
    }, h("span", { class: "meter-label" }, text), h("span", { class: "meter-value" }, String(Math.round(v)))));
}

export default async function matches() {
  const flash = flashBox();
  const picker = h("select", { "data-testid": "match-advertiser", "aria-label": "Advertiser" });
  const recalc = h("button", { type: "button", class: "secondary", "data-testid": "recalculate" }, "Recalculate");
  const note = h("span", { class: "muted small", "data-testid": "recalc-status", "aria-live": "polite" });
  const list = h("div", { class: "matches" }, loading());
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  mount(app(), h("div", { class: "page-head" }, h("h1", {}, "Matches"),
    h("div", { class: "row" }, h("label", {}, "Advertiser ", picker), recalc, note)), flash, list, more);

  let advertisers, showNames = new Map();
  try {
    advertisers = await all("/api/v1/advertisers", {}, 5);
    lookups().then((l) => { showNames = new Map(l.shows.map((x) => [x.id, x.name])); }).catch(() => {});
  } catch (e) {
    mount(list, empty("The advertisers could not be loaded."));
    return flash.show(e.message);
  }
  if (!advertisers.length) return mount(list, empty("No advertisers yet: import advertisers first."));
  const wanted = params().advertiser_id;
  mount(picker, advertisers.map((a) => h("option", { value: a.id, selected: a.id === wanted }, a.name)));
  if (!advertisers.some((a) => a.id === wanted)) picker.selectedIndex = 0;

  let cursor = null, seq = 0, rank = 0;
  picker.addEventListener("change", () => {
    history.replaceState(null, "", `/matches?${qs({ advertiser_id: picker.value })}`);
    load(true);
  });
  more.addEventListener("click", () => load(false));
  recalc.addEventListener("click", recalculate);
  await load(true);
  showStatus(await readStatus());

  /** GET /api/match/recalculate, or null when it cannot be read (the line just stays empty). */
  async function readStatus() {
    try { return await api("/api/match/recalculate"); } catch { return null; }
  }

  function showStatus(st) {
    if (!st) return;
    const parts = [];
    if (st.running.length) parts.push(`Recalculating now (started ${st.running[0].started_by === "schedule" ? "by the schedule" : "on demand"})…`);
    if (st.current) {
      const n = st.current.pairs_scored;
      parts.push(`Ranking of ${dateTime(st.current.computed_at)} (${st.current.trigger}, ${num(n)} pair${n === 1 ? "" : "s"} scored)`);
    } else if (!st.running.length) parts.push("Not scored yet");
    if (st.schedule) parts.push(st.schedule.paused ? "automatic runs paused" : `next automatic run ${dateTime(st.schedule.next_run_at)}`);
    note.textContent = parts.join(" · ");
  }

  async function load(reset) {
    const me = ++seq;
    if (reset) { cursor = null; rank = 0; mount(list, loading()); }
    more.disabled = true;
    try {
      const page = await api(`/api/v1/matches?${qs({ advertiser_id: picker.value, limit: 25, cursor })}`);
      if (me !== seq) return;
      if (reset) list.replaceChildren();
      for (const m of page.items) list.append(row(m, ++rank));
      if (!list.children.length) list.append(empty("No matches for this advertiser yet. Recalculate to score it."));
      cursor = page.next_cursor;
    } catch (e) {
      if (me !== seq) return;
      if (reset) mount(list, empty("The matches could not be loaded."));
      flash.show(e.message);
    }
    more.disabled = false;
    more.hidden = !cursor;
  }

  function row(m, n) {
    const show = m.show_name || showNames.get(m.show_id) || m.show_id;
    return h("article", { class: "card match-row", "data-testid": "match-row", dataset: { showId: m.show_id } },
      h("div", { class: "match-head" },
        h("span", { class: "rank" }, `#${n}`),
        h("h2", { class: "show-name" }, show),
        h("span", { class: "score", "data-testid": "score" }, String(Math.round(m.score)))),
      meter(m.score / 100, "Score", "score-bar", "big"),
      h("div", { class: "signals" }, SIGNALS.map(([k, text]) => meter(m.signals[k] ?? 0, text, "signal-bar"))),
      h("p", { class: "rationale", "data-testid": "rationale" }, m.rationale));
  }

  async function recalculate() {
    recalc.disabled = true;
    flash.clear();
    try {
      const before = (await readStatus())?.current?.generation ?? 0;
      await api("/api/match/recalculate", { method: "POST" });
      note.textContent = "Recalculating…";
      // Until a newer ranking is current and nothing runs any more (at most about two minutes).
      let idle = 0;
      for (let i = 0; i < 80; i++) {
        await new Promise((res) => setTimeout(res, 1500));
        const st = await readStatus();
        if (!st) continue;
        const newer = (st.current?.generation ?? 0) > before;
        if (!st.running.length && (newer || ++idle >= 3)) {
          await load(true);
          showStatus(st);
          if (!newer) flash.show("The recalculation ended without a new ranking; its workflow in the Temporal UI says why.");
          break;
        }
        showStatus(st);
      }
    } catch (e) {
      note.textContent = "";
      flash.show(`Recalculation did not start: ${e.message}`);
    }
    recalc.disabled = false;
  }
}
