// Shows what CAD nodes send in their UI output under the node: a per-block chart of the attribution
// (cad_summary, cad_map), the count of weights a mask selects (cad_mask), and the text summary (text).
import { app } from "../../scripts/app.js";
import { packFolder, viewsFor } from "./cad_views.js";

// The frontend insets each DOM widget by a 10 px margin on every side.
const WIDGET_MARGINS = 20;
// Room for about 22 px per block, so short block names stay readable; never wider than this.
const MAX_CHART_WIDTH = 640;

// This pack's nodes, as the backend reports them: ComfyUI gives every node of a custom-node folder the
// python_module "custom_nodes.<folder>" and serves that folder's web files under /extensions/<folder>/.
const PACK_MODULE = `custom_nodes.${packFolder(import.meta.url)}`;

// One DOM widget per node, created on the first execution and refilled on every later one.
function showViews(node, nodeName, message) {
  const views = viewsFor(nodeName, message);
  if (!views.length) return;
  if (!node.cadViewEl) {
    node.cadViewEl = document.createElement("div");
    node.cadViewEl.className = "cad-view";
    node.cadViewEl.style.cssText = "display:flex;flex-direction:column;gap:4px;padding:2px 4px;overflow:hidden;";
    node.cadViewParts = {};
    node.cadViewHeight = 0;
    node.addDOMWidget("cad_view", "cad_view", node.cadViewEl, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => node.cadViewHeight,
      getMaxHeight: () => node.cadViewHeight,
    });
  }
  const parts = node.cadViewParts;
  let height = WIDGET_MARGINS + 8;
  const shown = [];
  for (const view of views) {
    parts[view.kind] ??= document.createElement("div");
    height += view.render(parts[view.kind]) + 4;
    shown.push(parts[view.kind]);
  }
  const blocks = (message?.cad_map?.[0]?.rows ?? message?.cad_summary?.[0]?.blocks ?? []).length;
  node.cadViewWidth = Math.min(MAX_CHART_WIDTH, WIDGET_MARGINS + 16 + 22 * blocks);
  // A part from an earlier run that this message has no data for (e.g. the map ran without a mask) goes.
  node.cadViewEl.replaceChildren(...shown);
  node.cadViewHeight = height;
}

function showText(node, message) {
  const text = message?.text?.[0];
  if (!text) return;
  if (!node.cadSummaryEl) {
    node.cadSummaryEl = document.createElement("pre");
    node.cadSummaryEl.className = "cad-summary";
    node.cadSummaryEl.style.cssText = "margin:0;font-size:10px;white-space:pre-wrap;overflow:auto;";
    node.addDOMWidget("cad_summary", "cad_summary", node.cadSummaryEl, { serialize: false });
  }
  node.cadSummaryEl.textContent = text;
}

// Grow the node so the new content is visible; never shrink what the user sized.
function fitNode(node) {
  const [width, height] = node.computeSize();
  node.setSize([Math.max(node.size[0], width, node.cadViewWidth ?? 0), Math.max(node.size[1], height)]);
  node.setDirtyCanvas?.(true, true);
}

// The frontend adds its image preview (the map node's picture) only once the image has loaded, without
// growing the node; grow it then, so the preview does not spill below the node.
function fitOncePreviewShows(node, framesLeft = 300) {
  if (node.widgets?.some((w) => w.name === "$$canvas-image-preview")) fitNode(node);
  else if (framesLeft > 0) requestAnimationFrame(() => fitOncePreviewShows(node, framesLeft - 1));
}

app.registerExtension({
  name: "cad.summary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.python_module !== PACK_MODULE) return;
    const nodeName = nodeData.name;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      showViews(this, nodeName, message);
      showText(this, message);
      fitNode(this);
      if (message?.images?.length) fitOncePreviewShows(this);
    };
  },
});
