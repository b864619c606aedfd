// One deal: stage, values, history timeline, workflow link, move select.

import { api, app, dateTime, empty, flashBox, h, loading, money, mount, params, stageBadge, time } from "../lib.js";
import { askLostReason, changeStage, moveSelect } from "../stage.js";

export default async function deal() {
  const { deal_id: id, workflow_url: workflowUrl } = params();
  const flash = flashBox();
  const body = h("div", {}, loading());
  mount(app(), h("p", { class: "crumbs" }, h("a", { href: "/board" }, "← Pipeline")), flash, body);
  try {
    render(await api(`/api/v1/deals/${encodeURIComponent(id)}`));
  } catch (e) {
    mount(body, empty(e.status === 404 ? "This deal does not exist." : "The deal could not be loaded."));
    flash.show(e.message);
  }

  function render(d) {
    document.title = `sponsorflow · ${d.name}`;
    const fact = (term, ...value) => h("div", {}, h("dt", {}, term), h("dd", {}, ...value));
    mount(body,
      h("div", { class: "page-head" },
        h("h1", {}, d.name),
        h("p", { class: "muted" }, [d.advertiser_name, d.show_name].filter(Boolean).join(" · "))),
      h("section", { class: "card" },
        h("dl", { class: "facts" },
          fact("Stage", stageBadge(d.stage, { "data-testid": "deal-stage" })),
          fact("Probability", `${d.probability}%`),
          fact("Value", money(d.value_usd)),
          fact("Weighted value", money(d.weighted_value_usd)),
          fact("In stage", h("span", { "data-testid": "days-in-stage" }, String(d.days_in_stage)), " days"),
          d.expected_close && fact("Expected close", d.expected_close),
          d.owner_email && fact("Owner", d.owner_email),
          d.lost_reason && fact("Lost reason", h("span", { "data-testid": "lost-reason" }, d.lost_reason))),
        h("div", { class: "actions" },
          moveSelect(d.stage, move),
          d.stage === "won" && h("a", { class: "button", href: `/ios/new?deal=${encodeURIComponent(d.id)}`, "data-testid": "book-io" }, "Book an IO"),
          h("a", { "data-testid": "workflow-link", href: workflowUrl || d.temporal_ui_url, target: "_blank", rel: "noopener" },
            "Open workflow in Temporal UI"))),
      h("section", { class: "card" },
        h("h2", {}, "History"),
        d.history.length
          ? h("ol", { class: "timeline", "data-testid": "history" }, d.history.map((e) =>
            h("li", {},
              h("span", { class: "move" }, e.from ? `${e.from} → ${e.to}` : `created in ${e.to}`),
              " ", time(e.at, dateTime(e.at)),
              e.reason && h("p", { class: "muted" }, e.reason))))
          : h("ol", { class: "timeline", "data-testid": "history" })));

    async function move(target) {
      let reason;
      if (target === "lost" && (reason = await askLostReason(d.name)) == null) return;
      flash.clear();
      try {
        render(await changeStage(d.id, target, reason));
        flash.show(`Moved to ${target}.`, "ok", 4000);
      } catch (e) {
        flash.show(e.message);
      }
    }
  }
}
