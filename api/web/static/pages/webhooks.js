// Webhooks: the tenant's endpoints, add one (its secret shown once), pause/resume, send a test,
// rotate the secret (the new one shown once), delete, and one endpoint's deliveries with Retry on
// the failed ones and Send again (replay) since a moment. Everything goes through /api/v1/webhooks.

import { api, app, dateTime, empty, flashBox, h, label, loading, mount, qs, statusBadge, thead } from "../lib.js";

const ALL = "*";
// Asked for while a delivery is pending (or just after an action), so a test's result shows up by itself.
const POLL_MS = 1000;

export default async function webhooks() {
  const flash = flashBox();
  const typesBox = h("div", { class: "event-types", "data-testid": "webhook-event-types" }, loading("Loading event types…"));
  const submit = h("button", { type: "submit", "data-testid": "webhook-add" }, "Add endpoint");
  const form = h("form", { class: "card webhook-form", "data-testid": "webhook-form" },
    h("h2", {}, "Add an endpoint"),
    h("div", { class: "row" },
      h("label", { class: "grow" }, "URL",
        h("input", { type: "url", name: "url", required: true, maxlength: 2000, placeholder: "https://hooks.example.com/sponsorflow" })),
      h("label", {}, "Format",
        h("select", { name: "format" },
          h("option", { value: "standard" }, "Standard Webhooks (JSON)"),
          h("option", { value: "slack" }, "Slack (chat message)"))),
      h("label", { class: "grow" }, "Description (optional)", h("input", { type: "text", name: "description", maxlength: 500 }))),
    h("fieldset", { class: "types" }, h("legend", {}, "Event types"), typesBox),
    h("div", { class: "actions" }, submit));
  const secretPanel = h("section", { class: "card secret-once", "data-testid": "webhook-secret-panel", role: "status", hidden: true });
  const listBody = h("tbody", {});
  const listWrap = h("div", {}, loading());
  const listTable = h("div", { class: "table-wrap" },
    h("table", { "data-testid": "webhook-list" }, thead("Endpoint", "Event types", "Format", "Status", "Actions"), listBody));
  const deliveriesPanel = h("section", { class: "card", "data-testid": "deliveries-panel", hidden: true });
  mount(app(),
    h("div", { class: "page-head" }, h("h1", {}, "Webhooks"),
      h("p", { class: "muted" }, "Every event of this network, pushed to the systems you use: signed Standard Webhooks, or a chat message.")),
    flash, form, secretPanel,
    h("section", { class: "card" }, h("h2", {}, "Endpoints"), listWrap),
    deliveriesPanel);

  let selected = null; // the endpoint whose deliveries are shown
  let only = ""; // "" (all), or the one status shown: failed, pending, delivered
  let watching = 0; // bumps to stop an older deliveries poll
  let pollUntil = 0; // keep polling until then even when nothing is pending (a test was just sent)

  form.addEventListener("submit", (e) => { e.preventDefault(); create(); });
  await Promise.all([loadTypes(), loadList()]);

  /** The event types an endpoint can subscribe to, each with what it means (GET .../event-types). */
  async function loadTypes() {
    let items = [];
    try {
      items = (await api("/api/v1/webhooks/event-types")).items;
    } catch (e) {
      flash.show(`Could not read the event types: ${e.message}`);
    }
    const described = Object.fromEntries(items.map((i) => [i.type, i.description]));
    const all = h("input", { type: "checkbox", name: "event_types", value: ALL, "data-testid": "event-type-all" });
    const boxes = items.filter((i) => i.type !== ALL).map((i) => h("input", { type: "checkbox", name: "event_types", value: i.type }));
    all.addEventListener("change", () => { for (const b of boxes) b.disabled = all.checked; });
    mount(typesBox,
      h("label", { class: "check", title: described[ALL] || "" }, all, h("span", {}, "All events ", h("span", { class: "mono" }, "*"))),
      boxes.map((b) => h("label", { class: "check", title: described[b.value] || "" }, b, h("span", { class: "mono" }, b.value))));
  }

  async function create() {
    flash.clear();
    const f = form.elements;
    const chosen = [...form.querySelectorAll("input[name=event_types]:checked")].map((b) => b.value);
    const types = chosen.includes(ALL) ? [ALL] : chosen;
    if (!types.length) return flash.show("Choose at least one event type, or All events.");
    const body = { url: f.url.value.trim(), event_types: types, format: f.format.value };
    if (f.description.value.trim()) body.description = f.description.value.trim();
    submit.disabled = true;
    try {
      const created = await api("/api/v1/webhooks", { method: "POST", body });
      form.reset();
      for (const b of form.querySelectorAll("input[name=event_types]")) b.disabled = false;
      showSecret(created);
      await loadList();
      select(created);
    } catch (e) {
      flash.show(`The endpoint was not added: ${e.message}`);
    } finally {
      submit.disabled = false;
    }
  }

  /** The secret, this once: it is never readable again (Rotate secret makes a new one). */
  function showSecret(created, previousUntil = null) {
    const code = h("code", { class: "secret mono", "data-testid": "webhook-secret" }, created.secret);
    const copied = h("span", { class: "muted small", role: "status" });
    const copy = h("button", { type: "button", class: "secondary", "data-testid": "webhook-secret-copy", onclick: async () => {
      try {
        await navigator.clipboard.writeText(created.secret);
        copied.textContent = "Copied.";
      } catch {
        getSelection()?.selectAllChildren(code);
        copied.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
      }
    } }, "Copy");
    mount(secretPanel,
      h("h2", {}, "Signing secret for ", hostOf(created.url)),
      h("p", {}, h("strong", {}, "Copy it now: it is shown this once. "),
        "Your receiver verifies the ", h("span", { class: "mono" }, "webhook-signature"), " header with it.",
        previousUntil && h("span", { "data-testid": "webhook-previous-until" },
          ` The previous secret keeps signing beside it until ${dateTime(previousUntil)}: switch your receiver before then.`)),
      h("div", { class: "row secret-row" }, code, copy, copied),
      h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: () => { secretPanel.hidden = true; secretPanel.replaceChildren(); } }, "I saved it")));
    secretPanel.dataset.webhookId = created.id || "";
    secretPanel.hidden = false;
  }

  async function loadList() {
    try {
      const page = await api(`/api/v1/webhooks?${qs({ limit: 200 })}`);
      listBody.replaceChildren(...page.items.map(endpointRow));
      mount(listWrap, page.items.length ? listTable : empty("No endpoints yet. Add one above."));
      if (selected) {
        const fresh = page.items.find((w) => w.id === selected.id);
        if (fresh) selected = fresh;
        else { selected = null; deliveriesPanel.hidden = true; }
      }
    } catch (e) {
      mount(listWrap, empty("The endpoints could not be loaded."));
      flash.show(e.message);
    }
  }

  function endpointRow(w) {
    const paused = w.status === "paused";
    const toggle = h("button", { type: "button", class: "secondary", "data-testid": "webhook-toggle" }, paused ? "Resume" : "Pause");
    toggle.addEventListener("click", () => act(toggle, async () => {
      await api(`/api/v1/webhooks/${encodeURIComponent(w.id)}`, { method: "PATCH", body: { status: paused ? "active" : "paused" } });
      flash.show(paused ? `${hostOf(w.url)} resumed.` : `${hostOf(w.url)} paused: nothing is sent until it is resumed.`, "ok", 4000);
      await loadList();
    }));
    const test = h("button", { type: "button", class: "secondary", "data-testid": "webhook-test", disabled: paused,
      title: paused ? "Resume the endpoint to send a test" : "Send a webhook.test event now" }, "Send test");
    test.addEventListener("click", () => act(test, async () => {
      await api(`/api/v1/webhooks/${encodeURIComponent(w.id)}/test`, { method: "POST" });
      flash.show(`A test event is on its way to ${hostOf(w.url)}.`, "ok", 4000);
      pollUntil = Date.now() + 15000;
      only = ""; // the test's delivery is pending first: show it whatever the filter said
      select(w);
    }));
    const show = h("button", { type: "button", class: "secondary", "data-testid": "webhook-show-deliveries", onclick: () => select(w) }, "Deliveries");
    const rotate = h("button", { type: "button", class: "secondary", "data-testid": "webhook-rotate" }, "Rotate secret");
    rotate.addEventListener("click", () => act(rotate, async () => {
      if (!confirm(`Make a new signing secret for ${hostOf(w.url)}? The current one keeps signing beside it for a grace period; one left over from an earlier rotation stops at once.`)) return;
      const rotated = await api(`/api/v1/webhooks/${encodeURIComponent(w.id)}/rotate-secret`, { method: "POST" });
      showSecret({ id: w.id, url: w.url, secret: rotated.secret }, rotated.previous_secret_expires_at);
    }));
    const remove = h("button", { type: "button", class: "danger", "data-testid": "webhook-delete" }, "Delete");
    remove.addEventListener("click", () => act(remove, async () => {
      if (!confirm(`Delete the endpoint ${hostOf(w.url)}? Nothing more is sent to it, and its deliveries are deleted with it.`)) return;
      await api(`/api/v1/webhooks/${encodeURIComponent(w.id)}`, { method: "DELETE" });
      flash.show(`${hostOf(w.url)} deleted.`, "ok", 4000);
      if (selected && selected.id === w.id) { selected = null; watching++; deliveriesPanel.hidden = true; }
      if (secretPanel.dataset.webhookId === w.id) { secretPanel.hidden = true; secretPanel.replaceChildren(); }
      await loadList();
    }));
    return h("tr", { "data-testid": "webhook-row", dataset: { webhookId: w.id, status: w.status } },
      h("td", {}, h("strong", { class: "host" }, hostOf(w.url)),
        w.description && h("div", { class: "muted small" }, w.description),
        h("div", { class: "muted small url" }, w.url)),
      h("td", {}, w.event_types.includes(ALL) ? "All events" : h("span", { class: "mono small" }, w.event_types.join(", "))),
      h("td", {}, label(w.format)),
      h("td", {}, statusBadge(w.status, { "data-testid": "webhook-status" })),
      h("td", {}, h("div", { class: "row" }, toggle, test, show, rotate, remove)));
  }

  /** Runs a button's action once at a time; the server's refusal goes to the flash. */
  async function act(button, fn) {
    flash.clear();
    button.disabled = true;
    try { await fn(); } catch (e) { flash.show(e.message); } finally { button.disabled = false; }
  }

  /** Shows one endpoint's deliveries and keeps them fresh while one is pending. */
  async function select(w) {
    if (!selected || selected.id !== w.id) only = ""; // another endpoint: its whole list first
    selected = w;
    const me = ++watching;
    deliveriesPanel.hidden = false;
    deliveriesPanel.dataset.webhookId = w.id;
    const body = h("div", {}, loading("Loading deliveries…"));
    const filter = h("select", { "data-testid": "delivery-filter", "aria-label": "Show" },
      [["", "All"], ["failed", "Failed"], ["pending", "Pending"], ["delivered", "Delivered"]].map(([v, label]) =>
        h("option", { value: v, selected: v === only }, label)));
    filter.addEventListener("change", () => { only = filter.value; select(w); });
    mount(deliveriesPanel, h("h2", {}, "Deliveries to ", hostOf(w.url)),
      h("div", { class: "row" }, h("label", {}, "Show ", filter), replayForm(w)), body);
    for (;;) {
      let page;
      try {
        page = await api(`/api/v1/webhooks/${encodeURIComponent(w.id)}/deliveries?${qs({ limit: 50, status: only || undefined })}`);
      } catch (e) {
        if (me !== watching) return;
        mount(body, empty("The deliveries could not be loaded."));
        flash.show(e.message);
        return;
      }
      if (me !== watching) return;
      mount(body, page.items.length
        ? h("div", { class: "table-wrap" }, h("table", { "data-testid": "deliveries" },
          thead("Event", "Status", "#Attempts", "#Last code", "Last error", "Delivered", ""),
          h("tbody", {}, page.items.map((d) => deliveryRow(w, d)))))
        : empty(only ? `No ${only} deliveries.` : "Nothing sent yet. Send a test to see one here."));
      const pending = page.items.some((d) => d.status === "pending");
      if (!pending && Date.now() > pollUntil) return;
      await sleep(POLL_MS);
      if (me !== watching) return;
    }
  }

  /** Sends again every matching event since a moment (after an outage at the receiver), same webhook-ids. */
  function replayForm(w) {
    const since = h("input", { type: "datetime-local", name: "since", required: true, "data-testid": "replay-since",
      value: localInput(new Date(Date.now() - 3600_000)) });
    const go = h("button", { type: "submit", class: "secondary", "data-testid": "replay" }, "Send again");
    const form = h("form", { class: "row replay", "data-testid": "replay-form" },
      h("label", {}, "Everything since ", since), go);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      act(go, async () => {
        const from = new Date(since.value);
        if (Number.isNaN(from.getTime())) return flash.show("Choose when to send again from.");
        const r = await api(`/api/v1/webhooks/${encodeURIComponent(w.id)}/replay`, { method: "POST", body: { since: from.toISOString() } });
        flash.show(`Sending again: ${r.requeued} delivered or failed before, ${r.added} never queued.`, "ok", 6000);
        pollUntil = Date.now() + 15000;
        select(w);
      });
    });
    return form;
  }

  function deliveryRow(w, d) {
    const retry = d.status === "failed" && h("button", { type: "button", class: "secondary", "data-testid": "delivery-retry" }, "Retry");
    if (retry) {
      retry.addEventListener("click", () => act(retry, async () => {
        await api(`/api/v1/webhooks/${encodeURIComponent(w.id)}/deliveries/${encodeURIComponent(d.id)}/retry`, { method: "POST" });
        flash.show("Sending it again.", "ok", 4000);
        pollUntil = Date.now() + 15000;
        select(w);
      }));
    }
    return h("tr", { "data-testid": "delivery-row", dataset: { deliveryId: d.id, status: d.status } },
      h("td", { class: "mono" }, d.event_type),
      h("td", {}, statusBadge(d.status, { "data-testid": "delivery-status" }),
        d.status === "pending" && d.next_attempt_at && h("div", { class: "muted small" }, `next try ${dateTime(d.next_attempt_at)}`)),
      h("td", { class: "num" }, String(d.attempts)),
      h("td", { class: "num", "data-testid": "delivery-code" }, d.last_status_code == null ? "—" : String(d.last_status_code)),
      h("td", { class: "error-text" }, d.last_error || ""),
      h("td", {}, dateTime(d.delivered_at)),
      h("td", {}, retry || null));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A Date as a datetime-local input's value (local time, to the minute). */
function localInput(d) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function hostOf(url) {
  try { return new URL(url).host; } catch { return url; }
}
