// DOM views of the data CAD nodes send in their UI output: a per-block chart of attribution mass and
// the count of weights a mask selects. No ComfyUI imports, so the views can be checked outside a browser.
// The class names and data-* attributes are read by the browser tests; keep them stable.

export const POSITIVE = "#c83e4d"; // alpha > 0: carries the concept (same colours as the map picture)
export const NEGATIVE = "#3476a8"; // alpha < 0: suppresses it
export const SELECTED = "#2a9d8f"; // share of a block the mask selects

const BARS_HEIGHT = 72;
const SHARE_HEIGHT = 24;
const LINE_HEIGHT = 16;
// Beyond this many blocks (Flux has 57) the names no longer fit under the bars; hovering shows them.
const MAX_LABELLED_BLOCKS = 24;

export function formatCount(n) {
  return Number(n).toLocaleString("en-US");
}

// 0.0123 -> "1.23e-2": short enough for a caption, exact enough to compare blocks.
export function formatMass(x) {
  return x === 0 ? "0" : Number(x).toExponential(2).replace("e+", "e");
}

export function formatPercent(p) {
  if (p === 0) return "0%";
  return (p >= 0.01 ? p.toFixed(2) : p.toPrecision(2)) + "%";
}

function element(tag, className, css) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (css) el.style.cssText = css;
  return el;
}

// Fills `chart` (reused across executions) with one .cad-block per row.
// rows: [{block, label, positive_mass, negative_mass, weights, selected?, share?}], as the node sent them.
export function renderChart(chart, nodeName, rows, totals) {
  chart.className = "cad-chart";
  chart.setAttribute("data-cad-node", nodeName);
  chart.style.cssText = "display:flex;flex-direction:column;gap:2px;font:10px sans-serif;color:#ccc;";
  const withShares = rows.some((row) => row.share !== null && row.share !== undefined);
  const labelled = rows.length <= MAX_LABELLED_BLOCKS;
  const highest = Math.max(0, ...rows.map((row) => row.positive_mass));
  const deepest = Math.max(0, ...rows.map((row) => -row.negative_mass));
  const largestShare = Math.max(0, ...rows.map((row) => row.share ?? 0));

  const bars = element("div", "cad-chart-bars", "display:flex;gap:1px;align-items:stretch;");
  for (const row of rows) {
    bars.appendChild(blockColumn(row, { highest, deepest, largestShare, withShares, labelled }));
  }
  const caption = element("div", "cad-chart-caption", "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;");
  caption.textContent = `${formatCount(totals.weights)} weights · +${formatMass(totals.positive_mass)} / ` +
    `\u2212${formatMass(Math.abs(totals.negative_mass))}`;
  chart.replaceChildren(bars, caption);
  return BARS_HEIGHT + (withShares ? SHARE_HEIGHT : 0) + (labelled ? LINE_HEIGHT : 0) + LINE_HEIGHT + 8;
}

function blockColumn(row, scale) {
  const column = element("div", "cad-block", "flex:1 1 0;min-width:2px;display:flex;flex-direction:column;");
  column.setAttribute("data-block", row.block);
  column.setAttribute("data-positive", String(row.positive_mass));
  column.setAttribute("data-negative", String(row.negative_mass));
  const label = row.label ?? row.block;   // the short label comes from the pack's family records (cad_core)
  let tip = `${row.block}: +${formatMass(row.positive_mass)} / \u2212${formatMass(Math.abs(row.negative_mass))}` +
    ` (${formatCount(row.weights)} weights)`;

  // The zero line sits where positive and negative extents meet, so bar lengths compare across signs.
  const extent = scale.highest + scale.deepest || 1;
  const up = element("div", "cad-bar-area", `height:${(BARS_HEIGHT * scale.highest) / extent}px;` +
    "display:flex;flex-direction:column;justify-content:flex-end;border-bottom:1px solid #888;");
  up.appendChild(bar("cad-bar cad-bar-positive", POSITIVE, row.positive_mass, scale.highest));
  const down = element("div", "cad-bar-area", `height:${(BARS_HEIGHT * scale.deepest) / extent}px;`);
  down.appendChild(bar("cad-bar cad-bar-negative", NEGATIVE, -row.negative_mass, scale.deepest));
  column.append(up, down);

  if (scale.withShares) {
    const share = row.share ?? 0;
    column.setAttribute("data-selected", String(row.selected ?? 0));
    column.setAttribute("data-share", String(share));
    const strip = element("div", "cad-bar-area", `height:${SHARE_HEIGHT}px;margin-top:2px;` +
      "display:flex;flex-direction:column;justify-content:flex-end;border-bottom:1px solid #888;");
    strip.appendChild(bar("cad-bar cad-bar-share", SELECTED, share, scale.largestShare));
    column.appendChild(strip);
    tip += `; selected ${formatCount(row.selected ?? 0)} (${formatPercent(100 * share)})`;
  }
  if (scale.labelled) {
    const name = element("div", "cad-block-label",
      "text-align:center;font-size:8px;white-space:nowrap;overflow:hidden;");
    name.textContent = label;
    column.appendChild(name);
  }
  column.title = tip;
  return column;
}

function bar(className, colour, value, largest) {
  const percent = largest > 0 ? (100 * Math.max(value, 0)) / largest : 0;
  return element("div", className, `height:${percent}%;background:${colour};`);
}

// summary: a mask summary (Mask.summary() or the map's "mask" entry).
export function renderMaskCount(box, summary) {
  box.className = "cad-mask-count";
  box.setAttribute("data-selected", String(summary.selected));
  box.setAttribute("data-scoped", String(summary.scoped_weights));
  box.setAttribute("data-percent", String(summary.percent_of_scope));
  box.style.cssText = "font:11px sans-serif;color:#ccc;padding:2px 0;";
  box.textContent = `${formatCount(summary.selected)} of ${formatCount(summary.scoped_weights)} weights ` +
    `(${formatPercent(summary.percent_of_scope)})`;
  return LINE_HEIGHT + 4;
}

// The parts of a node's CAD view for one UI message: [{kind, render(el) -> height}], in display order.
export function viewsFor(nodeName, message) {
  const views = [];
  const summary = message?.cad_summary?.[0];
  const map = message?.cad_map?.[0];
  const mask = message?.cad_mask?.[0] ?? map?.mask;
  if (map) views.push({ kind: "chart", render: (el) => renderChart(el, nodeName, map.rows, map) });
  else if (summary) views.push({ kind: "chart", render: (el) => renderChart(el, nodeName, summary.blocks, summary) });
  if (mask) views.push({ kind: "mask", render: (el) => renderMaskCount(el, mask) });
  return views;
}

// The custom-node folder a web file of the pack is served from: ComfyUI serves it as /extensions/<folder>/<file>.
export function packFolder(url) {
  const path = new URL(url).pathname;
  const start = path.indexOf("/extensions/") + "/extensions/".length;
  return decodeURIComponent(path.slice(start, path.indexOf("/", start)));
}
