// Drives the real ComfyUI frontend in Chromium the way a user does: open each example workflow from the
// template browser, press Run, wait for the run to finish, then record what the page shows for every node.
// tests/browser/test_browser.py starts the server, writes the plan and checks the recorded results against
// GET /history; this script only drives the page and records, it asserts nothing itself.
//
//   node drive_workflows.mjs plan.json results.json
//   plan: {url, pack, screenshotsDir, chromium, runTimeoutMs, workflows: [{name, nodeIds: [..]}]}
//   results: {frontend: {version, nodeIdType}, workflows: [..], pageProblems, templateResponses}
//
// Works unchanged on ComfyUI 0.3.75 / frontend 1.32.9 and ComfyUI 0.33.0 / frontend 1.49.6: every control
// is found by what both frontends expose to a user (ARIA roles, accessible names, data-testid), not by
// component-library classes. Where the two differ:
//   - dialogs: 1.32.9 draws them with PrimeVue (.p-dialog), 1.49.6 without; both set role="dialog".
//   - the pack's template category: a role="button" item named after the pack in the dialog's sidebar
//     (1.49.6 lists it under "EXTENSIONS"); cards are [data-testid="template-workflow-<name>"] on both.
//   - Run is a split button on both, but aria-label="Run" sits on the primary part in 1.32.9 and on the
//     menu trigger ([data-testid="queue-mode-menu-trigger"], no text) in 1.49.6. RUN_BUTTON is the button
//     named Run whose visible text is "Run": the primary part on both.
//   - missing nodes/models: 1.32.9 opens a dialog, 1.49.6 shows a role="status" error overlay
//     ([data-testid="error-overlay"]) instead; LOAD_PROBLEMS records both.
//   - node ids: numbers in 1.32.9, strings in 1.49.6 (app.graph.nodes[i].id); recorded as numbers, like
//     the workflows' JSON ids and the plan's nodeIds.
// frontendVersion() reads the version once (window.__COMFYUI_FRONTEND_VERSION__) for the results; nothing
// below branches on it.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--no-first-run"];
// ui keys whose arrival a node's DOM must reflect before it is recorded
const SHOWN_UI_KEYS = ["cad_summary", "cad_mask", "cad_map", "images"];
const DIALOG = '[role="dialog"]';
// what the frontend shows when a loaded workflow lacks something: a dialog (1.32.9), an error overlay (1.49.6)
const LOAD_PROBLEMS = '[role="dialog"], [role="alertdialog"], [data-testid="error-overlay"]';
const RUN_BUTTON = (page) => page.getByRole("button", { name: "Run", exact: true }).filter({ hasText: /^\s*Run\s*$/ });
const FIT_VIEW_BUTTON = (page) => page.getByRole("button", { name: "Fit View (.)", exact: true });

const [planPath, resultsPath] = process.argv.slice(2);
const plan = JSON.parse(readFileSync(planPath, "utf8"));
const pageProblems = [];

async function getJson(path) {
  const response = await fetch(plan.url + path);
  return response.json();
}

async function waitForApp(page) {
  // A new user gets the template browser opened at start-up, at a moment of its choosing; a returning
  // user opens it from the sidebar, which is the path every workflow below takes.
  await fetch(plan.url + "/api/settings/Comfy.TutorialCompleted", { method: "POST", body: "true" });
  await page.goto(plan.url + "/");
  await page.waitForFunction(() => window.app?.graph && document.querySelector("canvas#graph-canvas"), null,
    { timeout: 120_000 });
}

async function frontendVersion(page) {
  return page.evaluate(() => ({
    version: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
    nodeIdType: app.graph.nodes.length ? typeof app.graph.nodes[0].id : null,
  }));
}

async function pressKey(page, key) {
  // Shortcuts are ignored while a text field has focus.
  await page.evaluate(() => document.activeElement?.blur());
  await page.keyboard.press(key);
}

async function noDialogs(page, timeout) {
  await page.waitForFunction((selector) => !document.querySelector(selector), DIALOG, { timeout });
}

async function closeDialogs(page) {
  if (await page.locator(DIALOG).first().isVisible()) {
    await page.keyboard.press("Escape");
    await noDialogs(page, 10_000);
  }
}

async function openTemplateCard(page, name) {
  await page.getByRole("button", { name: "Templates", exact: true }).click();
  await page.locator(DIALOG).getByRole("button", { name: plan.pack, exact: true }).click();
  const card = page.locator(`[data-testid="template-workflow-${name}"]`);
  await card.waitFor({ state: "visible", timeout: 30_000 });
  return card;
}

async function thumbnailOf(card) {
  const img = card.locator("img").first();
  // cards show a placeholder until their picture is requested
  await img.waitFor({ state: "attached", timeout: 15_000 }).catch(() => {});
  if ((await img.count()) === 0) return { present: false };
  await img.evaluate((el) => el.complete || new Promise((done) => {
    el.addEventListener("load", done, { once: true });
    el.addEventListener("error", done, { once: true });
  }));
  return img.evaluate((el) => ({ present: true, src: el.src, width: el.naturalWidth, height: el.naturalHeight }));
}

async function loadFromTemplates(page, workflow, shotDir) {
  await closeDialogs(page);
  // R refreshes node definitions, so file lists (Load CAD Attribution) see files saved by earlier runs.
  await pressKey(page, "r");
  const card = await openTemplateCard(page, workflow.name);
  const thumbnail = await thumbnailOf(card);
  await card.click();
  // the template browser closes; a missing-nodes dialog may open in its place, so wait for this card to go
  await card.waitFor({ state: "detached", timeout: 30_000 });
  const expected = [...workflow.nodeIds].sort((a, b) => a - b).join(",");
  await page.waitForFunction((ids) => app.graph.nodes.map((n) => Number(n.id)).sort((a, b) => a - b).join(",") === ids,
    expected, { timeout: 30_000 });
  // the missing-nodes dialog (1.32.9) or error overlay (1.49.6, ~300 ms) appears just after the graph is configured
  await page.waitForTimeout(1500);
  const loaded = await page.evaluate((selector) => ({
    dialogs: [...document.querySelectorAll(selector)].map((d) => d.textContent.slice(0, 500)),
    unregisteredTypes: app.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type),
  }), LOAD_PROBLEMS);
  await page.screenshot({ path: join(shotDir, "loaded.png"), fullPage: true });
  return { thumbnail, ...loaded };
}

// Every workflow must run in full, not from results cached by the one before (cad_4a shares its attribution
// with cad_1): /free with free_memory resets the server's execution cache. The server's worker only sees the
// request when the request's wake-up finds it waiting for work; one that arrives while the worker is busy
// elsewhere (its periodic gc.collect, 10 s after a run) stays pending until after the *next* prompt, which then
// runs from the cache (seen once on CI: cad_5a served 8 nodes from cad_4's run). The second /free, sent once
// the worker is back in its wait (unless that gc took over 1.5 s), wakes it; a reset already done is done again.
async function forgetCachedResults(page) {
  for (let attempt = 0; attempt < 2; attempt++) {
    await fetch(plan.url + "/api/free", { method: "POST", body: JSON.stringify({ unload_models: true, free_memory: true }) });
    await page.waitForTimeout(1500);
  }
}

async function queueFromRunButton(page) {
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/api/prompt") && r.request().method() === "POST"),
    RUN_BUTTON(page).click(),
  ]);
  return { status: response.status(), body: await response.json(), queuedGraph: response.request().postDataJSON().prompt };
}

async function waitForHistory(promptId) {
  const deadline = Date.now() + plan.runTimeoutMs;
  while (Date.now() < deadline) {
    const entry = (await getJson(`/history/${promptId}`))[promptId];
    if (entry?.status?.completed !== undefined) return entry;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`prompt ${promptId} did not finish within ${plan.runTimeoutMs} ms`);
}

// Everything the page shows for one node: its DOM widgets' CAD views, text summary and preview images.
function recordNodes() {
  const number = (el, name) => (el.hasAttribute(name) ? Number(el.getAttribute(name)) : null);
  return app.graph.nodes.map((node) => {
    const roots = (node.widgets ?? []).filter((w) => w.element instanceof HTMLElement).map((w) => w.element);
    const all = (selector) => roots.flatMap((root) => [...root.querySelectorAll(selector), ...(root.matches(selector) ? [root] : [])]);
    return {
      id: Number(node.id), type: node.type, title: node.title,
      domWidgetsConnected: roots.every((root) => root.isConnected),
      charts: all(".cad-chart").map((chart) => ({
        cadNode: chart.getAttribute("data-cad-node"),
        caption: chart.querySelector(".cad-chart-caption")?.textContent ?? null,
        blocks: [...chart.querySelectorAll(".cad-block")].map((b) => ({
          block: b.getAttribute("data-block"), positive: number(b, "data-positive"),
          negative: number(b, "data-negative"), selected: number(b, "data-selected"), share: number(b, "data-share"),
        })),
      })),
      maskCounts: all(".cad-mask-count").map((box) => ({
        selected: number(box, "data-selected"), scoped: number(box, "data-scoped"),
        percent: number(box, "data-percent"), text: box.textContent,
      })),
      summaryTexts: all("pre.cad-summary").map((pre) => pre.textContent),
      images: (node.imgs ?? []).map((img) => ({ src: img.src, complete: img.complete, width: img.naturalWidth,
        height: img.naturalHeight })),
    };
  });
}

function nodeShowsOutput(node, output) {
  const shown = { cad_summary: node.charts.length > 0, cad_mask: node.maskCounts.length > 0,
    cad_map: node.charts.length > 0, images: node.images.some((i) => i.complete && i.width > 0) };
  return SHOWN_UI_KEYS.every((key) => !(key in output) || shown[key]);
}

async function recordAfterRun(page, outputs) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const nodes = await page.evaluate(recordNodes);
    const waiting = nodes.filter((n) => outputs[n.id] && !nodeShowsOutput(n, outputs[n.id])).map((n) => n.id);
    if (!waiting.length || Date.now() > deadline) return { nodes, notShownInTime: waiting };
    await page.waitForTimeout(250);
  }
}

async function screenshotNodes(page, nodeIds, shotDir) {
  await FIT_VIEW_BUTTON(page).click();
  await page.waitForTimeout(400);
  await page.screenshot({ path: join(shotDir, "finished.png"), fullPage: true });
  const shots = [];
  for (const id of nodeIds) {
    const clip = await page.evaluate((nodeId) => {
      const node = app.graph.getNodeById(nodeId);
      const ds = app.canvas.ds;
      ds.scale = 1;
      const box = app.canvas.canvas.getBoundingClientRect();
      // the node's top-left (title bar included) well inside the canvas, clear of the menus, at 100% zoom
      const [left, top] = [box.left + 320, box.top + 150];
      ds.offset[0] = left - box.left - node.pos[0];
      ds.offset[1] = top - box.top + LiteGraph.NODE_TITLE_HEIGHT - node.pos[1];
      app.canvas.setDirty(true, true);
      return { x: left - 10, y: top - 10, width: node.size[0] + 20,
        height: Math.min(node.size[1] + LiteGraph.NODE_TITLE_HEIGHT + 20, window.innerHeight - top) };
    }, id);
    await page.waitForTimeout(300); // DOM widgets follow the canvas on the next frames
    const path = join(shotDir, `node_${id}.png`);
    await page.screenshot({ path, clip });
    shots.push(path);
  }
  return shots;
}

// Fills `result` step by step, so that what was recorded before a failing step is kept with the failure.
async function runWorkflow(page, workflow, result) {
  const shotDir = join(plan.screenshotsDir, workflow.name);
  mkdirSync(shotDir, { recursive: true });
  result.load = await loadFromTemplates(page, workflow, shotDir);
  await forgetCachedResults(page);
  const queued = await queueFromRunButton(page);
  result.queue = { status: queued.status, body: queued.body, graph: queued.queuedGraph };
  if (queued.status !== 200) return;
  result.promptId = queued.body.prompt_id;
  const entry = await waitForHistory(result.promptId);
  Object.assign(result, await recordAfterRun(page, entry.outputs ?? {}));
  const shown = Object.keys(entry.outputs ?? {}).map(Number).filter((id) => workflow.nodeIds.includes(id));
  result.screenshots = await screenshotNodes(page, shown, shotDir);
}

const browser = await chromium.launch({ executablePath: plan.chromium, args: CHROMIUM_FLAGS });
const templateResponses = []; // the thumbnails arrive as blob: URLs, so their requests are what names them
const results = { frontend: null, workflows: [], pageProblems, templateResponses };
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1200 } });
  page.on("response", (response) => {
    if (response.url().includes("/workflow_templates/")) templateResponses.push({ url: response.url(), status: response.status() });
  });
  page.on("pageerror", (error) => pageProblems.push({ kind: "pageerror", text: String(error.stack || error) }));
  page.on("console", (message) => {
    if (message.type() === "error") pageProblems.push({ kind: "console", text: message.text(), url: message.location().url });
  });
  await waitForApp(page);
  results.frontend = await frontendVersion(page);
  for (const workflow of plan.workflows) {
    const result = { name: workflow.name };
    results.workflows.push(result);
    try {
      await runWorkflow(page, workflow, result);
    } catch (error) {
      result.failure = String(error.stack || error);
      await page.screenshot({ path: join(plan.screenshotsDir, `${workflow.name}_failure.png`), fullPage: true });
    }
  }
} finally {
  writeFileSync(resultsPath, JSON.stringify(results, null, 1));
  await browser.close();
}
