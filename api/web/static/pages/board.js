// Pipeline board: a column per stage, drag (or pick in the select) to move a deal.

import { STAGES, api, app, empty, flashBox, h, label, lookups, money, mount, qs } from "../lib.js";
import { askLostReason, changeStage, moveSelect } from "../stage.js";

export default async function board() {
  const flash = flashBox();
  const grid = h("div", { class: "board" });
  mount(app(), h("div", { class: "page-head" }, h("h1", {}, "Pipeline"),
    h("p", { class: "muted" }, "Drag a deal to another column, or use its “Move to” menu.")), flash, grid);

  let names = { advertiser: new Map(), show: new Map() };
  try { names = await lookups(); } catch (e) { flash.show(`Advertiser and show names are unavailable: ${e.message}`); }

  const columns = new Map();
  for (const stage of STAGES) {
    const col = column(stage);
    columns.set(stage, col);
    grid.append(col.el);
  }
  await Promise.all(STAGES.map((st) => loadPage(columns.get(st))));

  // -- columns -------------------------------------------------------------------------
  function column(stage) {
    const count = h("span", { class: "count", "data-testid": "column-count" }, "…");
    const total = h("span", { class: "total", "data-testid": "column-total" });
    const list = h("div", { class: "cards", role: "list" });
    const none = empty("No deals in this stage");
    const more = h("button", { type: "button", class: "secondary more", hidden: true }, "Load more");
    const el = h("section", { class: `column col-${stage}`, "data-testid": `column-${stage}`, dataset: { stage }, "aria-label": label(stage) },
      h("header", {}, h("h2", {}, label(stage)), count, total), list, none, more);
    const col = { stage, el, list, none, count, total, more, cursor: null };
    more.addEventListener("click", () => loadPage(col));
    // Drop target: highlight while a card hovers, move on drop.
    el.addEventListener("dragover", (e) => { e.preventDefault(); e.dataTransfer.dropEffect = "move"; el.classList.add("drop-target"); });
    el.addEventListener("dragleave", (e) => { if (!el.contains(e.relatedTarget)) el.classList.remove("drop-target"); });
    el.addEventListener("drop", (e) => {
      e.preventDefault();
      el.classList.remove("drop-target");
      const id = e.dataTransfer.getData("text/plain");
      const card = id && grid.querySelector(`[data-testid="deal-card"][data-deal-id="${CSS.escape(id)}"]`);
      if (card) move(card, stage);
    });
    return col;
  }

  async function loadPage(col) {
    col.more.disabled = true;
    try {
      const page = await api(`/api/v1/deals?${qs({ stage: col.stage, limit: 50, cursor: col.cursor })}`);
      for (const d of page.items) col.list.append(card(d));
      col.cursor = page.next_cursor;
    } catch (e) {
      flash.show(`Could not load ${col.stage} deals: ${e.message}`);
    }
    col.more.disabled = false;
    refresh(col);
  }

  function refresh(col) {
    const cards = [...col.list.children];
    const sum = cards.reduce((acc, c) => acc + Number(c.dataset.value || 0), 0);
    col.count.textContent = `${cards.length}${col.cursor ? "+" : ""}`;
    col.count.title = `${cards.length} deal(s) loaded`;
    col.total.textContent = money(sum);
    col.none.hidden = cards.length > 0;
    col.more.hidden = !col.cursor;
  }

  // -- cards ---------------------------------------------------------------------------
  function card(d) {
    const adv = d.advertiser_name ?? names.advertiser.get(d.advertiser_id)?.name;
    const show = d.show_name ?? (d.show_id ? names.show.get(d.show_id)?.name : null);
    const el = h("article", {
      class: "deal-card", role: "listitem", draggable: "true", "data-testid": "deal-card",
      dataset: { dealId: d.id, stage: d.stage, value: d.value_usd },
    },
      h("a", { class: "deal-name", href: `/deals/${encodeURIComponent(d.id)}`, draggable: "false" }, d.name),
      (adv || show) && h("p", { class: "muted small" }, [adv, show].filter(Boolean).join(" · ")),
      h("p", { class: "deal-meta" }, h("strong", {}, money(d.value_usd)),
        h("span", { class: "muted", title: "days in this stage" }, `${d.days_in_stage} d in stage`)),
      moveSelect(d.stage, (target) => move(el, target)));
    el.addEventListener("dragstart", (e) => {
      e.dataTransfer.setData("text/plain", d.id);
      e.dataTransfer.effectAllowed = "move";
      el.classList.add("dragging");
    });
    el.addEventListener("dragend", () => {
      el.classList.remove("dragging");
      grid.querySelectorAll(".drop-target").forEach((c) => c.classList.remove("drop-target"));
    });
    return el;
  }

  /** Optimistic move: place the card, ask for a lost reason if needed, PATCH, snap back on failure. */
  async function move(el, target) {
    const from = columns.get(el.dataset.stage);
    const to = columns.get(target);
    if (!to || from === to || el.classList.contains("pending")) return;
    const home = { parent: el.parentNode, next: el.nextSibling };
    const snapBack = () => { home.parent.insertBefore(el, home.next); refresh(from); refresh(to); };
    to.list.prepend(el);
    refresh(from); refresh(to);
    let reason;
    if (target === "lost") {
      reason = await askLostReason(el.querySelector(".deal-name").textContent);
      if (reason == null) { snapBack(); return; }
    }
    el.classList.add("pending");
    el.setAttribute("aria-busy", "true");
    flash.clear();
    try {
      const deal = await changeStage(el.dataset.dealId, target, reason);
      const fresh = card(deal);
      el.replaceWith(fresh);
      const landed = columns.get(deal.stage);
      if (landed && landed !== to) landed.list.prepend(fresh);
      [from, to, landed].forEach((c) => c && refresh(c));
      fresh.querySelector(".deal-name").focus({ preventScroll: true });
    } catch (e) {
      el.classList.remove("pending");
      el.removeAttribute("aria-busy");
      snapBack();
      flash.show(e.message);
    }
  }
}
