// Imports: upload with progress (XHR), poll the import's status, row errors, history.

import { api, app, csrf, dateTime, empty, errorText, flashBox, h, label, mount, num, qs, signIn, statusBadge, thead, time } from "../lib.js";

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
    const twoPhases = st.kind === "campaigns";
    statusPanel.dataset.phase = st.phase;
    statusPanel.dataset.status = st.status;
    mount(statusPanel,
      h("h2", {}, st.filename, " ", h("span", { class: "muted small" }, `(${label(st.kind)})`)),
      h("div", { class: "row" },
        h("span", { class: `badge status-${st.status}`, "data-testid": "import-status" }, st.status),
        h("span", { class: `badge phase-${st.phase}`, "data-testid": "import-phase", dataset: { phase: st.phase } }, phaseLabel(st, twoPhases)),
        st.started_at && h("span", { class: "muted small" }, "started ", time(st.started_at, clock(st.started_at)))),
      h("ol", { class: "phases" }, rowsPhase(st, done, twoPhases), twoPhases && workflowsPhase(st, done)),
      st.error && h("p", { class: "flash error inline" }, st.error),
      st.warnings.length > 0 && h("ul", { class: "warnings" }, st.warnings.map((w) => h("li", {}, w))),
      done && rowErrors(st));
  }

  /** Phase 1: rows parsed and committed in chunks (the import's counts). */
  function rowsPhase(st, done, twoPhases) {
    const rowsDone = st.rows_finished_at != null || st.phase === "workflows" || st.status === "completed" || st.status === "completed_with_errors";
    const share = rowsDone ? 1 : st.progress;
    const state = rowsDone ? "done" : done ? "stopped" : "active";
    return h("li", { class: `phase ${state}`, "data-testid": "phase-rows", dataset: { state } },
      h("div", { class: "phase-head" },
        twoPhases && h("span", { class: "phase-n", "aria-hidden": "true" }, "1"),
        h("strong", {}, "Rows committed"),
        h("span", { class: "muted small", "data-testid": "rows-finished" },
          rowsDone && st.rows_finished_at
            ? ["done ", time(st.rows_finished_at, clock(st.rows_finished_at)), took(st.started_at, st.rows_finished_at)]
            : state === "stopped" ? "stopped" : rowsDone ? "done" : st.status === "pending" ? "waiting to start" : "in progress")),
      h("div", { class: "phase-bar" },
        h("progress", { max: 1, value: share, "data-testid": "import-progress", "aria-label": "Rows committed" }),
        h("span", { class: "muted small" }, `${Math.round(share * 100)}%`)),
      h("p", { class: "counts", "data-testid": "import-counts",
        dataset: { processed: st.rows_processed, inserted: st.rows_inserted, updated: st.rows_updated, failed: st.rows_failed } },
        `Processed ${num(st.rows_processed)}${st.rows_total != null ? ` of ${num(st.rows_total)}` : ""}`,
        ` · inserted ${num(st.rows_inserted)} · updated ${num(st.rows_updated)} · failed ${num(st.rows_failed)}`));
  }

  /** Phase 2 (campaigns): the open deals' workflows started, bounded by Temporal's start rate. */
  function workflowsPhase(st, done) {
    const total = st.workflows_to_start;
    const started = st.workflows_started;
    const pending = st.workflows_pending ?? (total == null ? null : Math.max(0, total - started));
    let state;
    let text;
    if (total == null) {
      state = done ? "stopped" : "waiting";
      text = done ? "Not started: the import ended before every row was committed." : "Starts once every row is committed.";
    } else if (total === 0) {
      state = "done";
      text = "No open deals in the file: no workflows to start.";
    } else {
      state = pending === 0 ? "done" : done ? "stopped" : "active";
      text = `Workflows started ${num(started)} of ${num(total)} (${num(pending)} pending)`;
    }
    const share = total ? started / total : state === "done" ? 1 : 0;
    return h("li", { class: `phase ${state}`, "data-testid": "phase-workflows", dataset: { state } },
      h("div", { class: "phase-head" },
        h("span", { class: "phase-n", "aria-hidden": "true" }, "2"),
        h("strong", {}, "Deal workflows started"),
        h("span", { class: "muted small" },
          state === "done" && st.finished_at && st.rows_finished_at && total
            ? ["done ", time(st.finished_at, clock(st.finished_at)), took(st.rows_finished_at, st.finished_at)]
            : state === "active" ? "in progress" : state === "stopped" ? "stopped" : state === "waiting" ? "next" : "done")),
      total ? h("div", { class: "phase-bar" },
        h("progress", { max: 1, value: share, "data-testid": "workflows-progress", "aria-label": "Deal workflows started" }),
        h("span", { class: "muted small" }, `${Math.round(share * 100)}%`)) : null,
      h("p", { class: "counts", "data-testid": "import-workflows",
        dataset: { started, toStart: total ?? "", pending: pending ?? "" } }, text),
      st.workflows_resynced > 0 && h("p", { class: "muted small" },
        `${num(st.workflows_resynced)} changed open deals told to re-read their row`));
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
      st.errors.length ? h("div", { class: "table-wrap" }, table) : null);
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

/** The phase in words: which of the two runs, or that the import is over. */
function phaseLabel(st, twoPhases) {
  if (st.phase === "done") return "done";
  if (!twoPhases) return "committing rows";
  return st.phase === "workflows" ? "phase 2 of 2: starting deal workflows" : "phase 1 of 2: committing rows";
}

/** "14:03:27" (seconds matter for an import), with the date when it is not today. */
function clock(iso) {
  const d = new Date(iso);
  const t = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return d.toDateString() === new Date().toDateString() ? t : `${d.toLocaleDateString(undefined, { month: "short", day: "numeric" })} ${t}`;
}

/** " (took 4.2 s)" between two instants, or nothing when one is missing. */
function took(fromIso, toIso) {
  if (!fromIso || !toIso) return "";
  const s = Math.max(0, (new Date(toIso) - new Date(fromIso)) / 1000);
  const text = s < 60 ? `${s < 10 ? s.toFixed(1) : Math.round(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return ` (took ${text})`;
}
