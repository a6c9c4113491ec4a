// Opens one CAD node's help the way a user does (the node on the canvas, a click on its title, then the selection
// toolbox's info button) in the real frontend; records whether the help panel shows the page's text and which
// help URLs the page fetched. tests/browser/test_help_panel.py starts the server and checks the record.
//   node help_panel.mjs plan.json result.json
//   plan: {url, chromium, nodeId, expectText, screenshot}   result: {frontend, fetched, steps, shown, error?}
import { readFileSync, writeFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [planPath, resultPath] = process.argv.slice(2);
const plan = JSON.parse(readFileSync(planPath, "utf8"));
const result = { fetched: [], steps: [] };
const browser = await chromium.launch({ executablePath: plan.chromium, args: ["--headless", "--no-sandbox",
  "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"] });
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on("response", (r) => { if (r.url().includes("/docs/")) result.fetched.push({ url: r.url(), status: r.status() }); });
  await fetch(plan.url + "/api/settings/Comfy.TutorialCompleted", { method: "POST", body: "true" });
  await page.goto(plan.url + "/");
  await page.waitForFunction(() => window.app?.graph && document.querySelector("canvas#graph-canvas"), null,
    { timeout: 120_000 });
  result.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
  await page.keyboard.press("Escape");
  // the node is added by script, then selected by a click on its title, as a user selects it
  const title = await page.evaluate((type) => {
    app.graph.clear();
    const node = LiteGraph.createNode(type);
    node.pos = [400, 300];
    app.graph.add(node);
    app.canvas.setDirty(true, true);
    const { offset, scale } = app.canvas.ds;
    const box = app.canvas.canvas.getBoundingClientRect();
    return { x: box.left + (node.pos[0] + 60 + offset[0]) * scale, y: box.top + (node.pos[1] - 15 + offset[1]) * scale };
  }, plan.nodeId);
  await page.waitForTimeout(500);
  await page.mouse.click(title.x, title.y);
  result.steps.push("node added and clicked");
  // The selection toolbox's info button: 1.32.9 opens the node library's help panel, 1.49.6 the properties
  // panel's Info tab; both fetch docs/<NodeId>/<locale>.md, then docs/<NodeId>.md.
  const info = page.locator('[data-testid="info-button"]').first();
  await info.waitFor({ state: "visible", timeout: 20_000 });
  await info.click();
  result.steps.push("info button clicked");
  await page.waitForFunction((text) => document.body.innerText.includes(text), plan.expectText, { timeout: 30_000 })
    .then(() => result.steps.push("help text shown"), () => result.steps.push("help text NOT shown"));
  result.shown = await page.evaluate((text) => document.body.innerText.includes(text), plan.expectText);
  await page.screenshot({ path: plan.screenshot, fullPage: true });
} catch (e) {
  result.error = String(e);
  for (const p of browser.contexts().flatMap((c) => c.pages())) await p.screenshot({ path: plan.screenshot }).catch(() => {});
} finally {
  await browser.close();
  writeFileSync(resultPath, JSON.stringify(result, null, 1));
}
