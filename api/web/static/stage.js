// Stage moves shared by the board and the deal page: the move select, the lost-reason dialog, the PATCH.

import { STAGES, api, h, label } from "./lib.js";

/** <select> of the other stages; onMove(target) runs when one is picked (the select then resets). */
export function moveSelect(current, onMove) {
  const sel = h("select", { "data-testid": "move-select", "aria-label": "Move to stage", class: "move-select" },
    h("option", { value: "" }, "Move to…"),
    STAGES.filter((st) => st !== current).map((st) => h("option", { value: st }, label(st))));
  sel.addEventListener("change", () => {
    const target = sel.value;
    sel.value = "";
    if (target) onMove(target);
  });
  return sel;
}

let dialog;
/** Asks why the deal was lost; resolves to the reason, or null when cancelled. */
export function askLostReason(dealName = "") {
  if (!dialog) {
    const input = h("input", { name: "reason", required: true, maxlength: 2000, autocomplete: "off", id: "lost-reason" });
    dialog = h("dialog", { "data-testid": "lost-dialog", class: "dialog", "aria-labelledby": "lost-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "lost-title" }, "Mark as lost"),
        h("p", { class: "muted lost-deal" }),
        h("label", { for: "lost-reason" }, "Why was it lost?"),
        input,
        h("div", { class: "actions" },
          h("button", { type: "button", class: "secondary", "data-testid": "lost-cancel", value: "cancel" }, "Cancel"),
          h("button", { type: "submit", class: "danger", "data-testid": "lost-confirm" }, "Mark lost"))));
    document.body.append(dialog);
  }
  const form = dialog.querySelector("form");
  const input = form.elements.reason;
  dialog.querySelector(".lost-deal").textContent = dealName;
  input.value = "";
  return new Promise((resolve) => {
    const done = (value) => {
      form.removeEventListener("submit", onSubmit);
      cancelBtn.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const reason = input.value.trim();
      if (!reason) { input.value = ""; input.reportValidity(); return; }
      done(reason);
    };
    const onCancel = (e) => { e.preventDefault(); done(null); };
    const cancelBtn = dialog.querySelector('[data-testid="lost-cancel"]');
    form.addEventListener("submit", onSubmit);
    cancelBtn.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    input.focus();
  });
}

/** PATCH the stage; resolves to the updated DealPublic, throws ApiError (409 message verbatim). */
export function changeStage(id, stage, reason) {
  const body = stage === "lost" ? { stage, reason } : { stage };
  return api(`/api/v1/deals/${encodeURIComponent(id)}/stage`, { method: "PATCH", body });
}
