// Imports: upload with progress (XHR), poll the import's status, row errors, history.

import { api, app, csrf, dateTime, empty, errorText, flashBox, h, label, mount, num, qs, signIn, statusBadge, thead } from "../lib.js";

const KINDS = ["shows", "advertisers", "campaigns", "show_downloads", "deliveries"];
const TERMINAL = new Set(["completed", "completed_with_errors", "failed", "cancelled"]);

export default function imports() {
  const flash = flashBox();
  const uploadBar = h("progress", { max: 1, value: 0, "data-testid": "upload-progress", hidden: true });
  const submit = h("button", { type: "submit" }, "Upload");
  const form = h("form", { class: "card upload", "data-testid": "upload-form" },
    h("h2", {}, "Upload a spreadsheet"),
    h("div", { class: "row" },
      h("label", {}, "Kind", h("select", { name: "kind", required: true }, KINDS.map((k) => h("option", { value: k }, label(k))))),
      h("label", {}, "File (.csv or .xlsx)", h("input", { type: "file", name: "file", accept: ".csv,.xlsx", required: true })),
      submit),
    uploadBar);
  const statusPanel = h("section", { class: "card", "data-testid": "import-panel", hidden: true });
  const historyBody = h("tbody", {});
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  mount(app(), h("div", { class: "page-head" }, h("h1", {}, "Imports")), flash, form, statusPanel,
    h("section", { class: "card" }, h("h2", {}, "History"),
      h("div", { class: "table-wrap" },
        h("table", { "data-testid": "import-history" },
          thead("File", "Kind", "Status", "#Processed", "#Failed", "Uploaded"),
          historyBody)),
      more));

  let cursor = null;
  let watching = 0; // bumps to stop an older poll loop

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!form.elements.file.files.length) return form.elements.file.reportValidity();
    flash.clear();
    upload(new FormData(form));
  });
  more.addEventListener("click", () => loadHistory());
  loadHistory(true);

  /** XHR rather than fetch so the upload shows its progress. */
  function upload(data) {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/etl/upload");
    xhr.setRequestHeader("X-CSRF-Token", csrf());
    xhr.setRequestHeader("Accept", "application/json");
    submit.disabled = true;
    uploadBar.hidden = false;
    uploadBar.value = 0;
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) uploadBar.value = e.loaded / e.total; });
    const finish = () => { submit.disabled = false; };
    xhr.addEventListener("load", () => {
      finish();
      if (xhr.status === 401) return signIn();
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300 && body) {
        uploadBar.value = 1;
        form.reset();
        watch(body.import_id);
      } else {
        uploadBar.hidden = true;
        flash.show(`Upload failed: ${errorText(body, xhr.status)}`);
      }
    });
    xhr.addEventListener("error", () => { finish(); uploadBar.hidden = true; flash.show("Upload failed: the server could not be reached."); });
    xhr.send(data);
  }

  /** Shows one import and polls it every 500 ms until its status is terminal. */
  async function watch(id) {
    const me = ++watching;
    statusPanel.hidden = false;
    mount(statusPanel, h("p", { class: "loading" }, "Loading import…"));
    for (;;) {
      let st;
      try {
        st = await api(`/api/v1/etl/status/${encodeURIComponent(id)}`);
      } catch (e) {
        if (me !== watching) return;
        flash.show(`Could not read the import's status: ${e.message}`);
        if (e.status && e.status < 500) return;
        await sleep(2000);
        continue;
      }
      if (me !== watching) return;
      renderStatus(st);
      if (TERMINAL.has(st.status)) { loadHistory(true); return; }
      await sleep(500);
      if (me !== watching) return;
    }
  }

  function renderStatus(st) {
    const done = TERMINAL.has(st.status);
    mount(statusPanel,
      h("h2", {}, st.filename, " ", h("span", { class: "muted small" }, `(${label(st.kind)})`)),
      h("div", { class: "row" },
        h("span", { class: `badge status-${st.status}`, "data-testid": "import-status" }, st.status),
        h("progress", { max: 1, value: st.progress, "data-testid": "import-progress", "aria-label": "Import progress" }),
        h("span", { class: "muted" }, `${Math.round(st.progress * 100)}%`)),
      h("p", { class: "counts", "data-testid": "import-counts",
        dataset: { processed: st.rows_processed, inserted: st.rows_inserted, updated: st.rows_updated, failed: st.rows_failed } },
        `Processed ${num(st.rows_processed)}${st.rows_total != null ? ` of ${num(st.rows_total)}` : ""}`,
        ` · inserted ${num(st.rows_inserted)} · updated ${num(st.rows_updated)} · failed ${num(st.rows_failed)}`,
        st.workflows_started ? ` · ${num(st.workflows_started)} workflows started` : ""),
      st.error && h("p", { class: "flash error inline" }, st.error),
      st.warnings.length > 0 && h("ul", { class: "warnings" }, st.warnings.map((w) => h("li", {}, w))),
      done && rowErrors(st));
  }

  function rowErrors(st) {
    const table = h("table", { "data-testid": "row-errors", class: "errors" },
      thead("Row", "Column", "Value", "Message"),
      h("tbody", {}, st.errors.map((e) => h("tr", {},
        h("td", {}, String(e.row)), h("td", {}, e.column ?? ""), h("td", { class: "mono" }, e.value ?? ""), h("td", {}, e.message)))));
    return h("div", {},
      h("h3", {}, "Row errors"),
      st.errors.length ? null : empty("No row errors."),
      st.rows_failed > st.errors.length ? h("p", { class: "muted" }, `Showing the first ${num(st.errors.length)} of ${num(st.rows_failed)}.`) : null,
      h("div", { class: "table-wrap" }, table));
  }

  async function loadHistory(reset = false) {
    if (reset) cursor = null;
    try {
      const page = await api(`/api/v1/etl/history?${qs({ limit: 20, cursor })}`);
      if (reset) historyBody.replaceChildren();
      for (const r of page.items) historyBody.append(historyRow(r));
      if (!historyBody.children.length) historyBody.append(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No imports yet.")));
      cursor = page.next_cursor;
      more.hidden = !cursor;
    } catch (e) {
      flash.show(`Could not load the import history: ${e.message}`);
    }
  }

  function historyRow(r) {
    const open = () => { watch(r.import_id); statusPanel.scrollIntoView({ behavior: "smooth", block: "nearest" }); };
    return h("tr", {
      class: "clickable", tabindex: 0, dataset: { importId: r.import_id }, title: "Show this import",
      onclick: open, onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } },
    },
      h("td", {}, r.filename), h("td", {}, label(r.kind)), h("td", {}, statusBadge(r.status)),
      h("td", { class: "num" }, num(r.rows_processed)), h("td", { class: "num" }, num(r.rows_failed)),
      h("td", {}, dateTime(r.created_at)));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
