// sponsorflow web app entry: marks the nav link of this page, then renders the page named by <body data-page>.
// Plain ES modules, no build step: each page module exports a function that renders into <main id="app">.

import { app, empty, h, mount } from "./lib.js";

const PAGES = {
  dashboard: ["/", () => import("./pages/dashboard.js")],
  board: ["/board", () => import("./pages/board.js")],
  deal: ["/board", () => import("./pages/deal.js")],
  imports: ["/imports", () => import("./pages/imports.js")],
  ios: ["/ios", () => import("./pages/ios.js").then((m) => ({ default: m.ioList }))],
  io: ["/ios", () => import("./pages/ios.js").then((m) => ({ default: m.ioDetail }))],
  io_new: ["/ios", () => import("./pages/io_new.js")],
  matches: ["/matches", () => import("./pages/matches.js")],
  events: ["/events", () => import("./pages/events.js")],
  webhooks: ["/webhooks", () => import("./pages/webhooks.js")],
};

async function start() {
  const page = document.body.dataset.page;
  const [navHref, load] = PAGES[page] || [];
  for (const a of document.querySelectorAll(".topbar nav a")) {
    const on = a.getAttribute("href") === navHref;
    a.classList.toggle("active", on);
    if (on) a.setAttribute("aria-current", "page");
  }
  if (!load) return mount(app(), empty(`Unknown page “${page}”.`));
  try {
    const mod = await load();
    await mod.default();
  } catch (e) {
    console.error(e);
    mount(app(), h("p", { class: "flash error", role: "alert", "data-testid": "flash" }, `Something went wrong: ${e.message}`));
  }
}

start();
