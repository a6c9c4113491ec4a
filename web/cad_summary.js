// Shows the text summary CAD nodes send in their UI output ({"text": [...]}) under the node.
import { app } from "../../scripts/app.js";

const CAD_NODES = new Set([
  "CADAttribute", "CADEraseMask", "CADAmplifyMask", "CADCombineMasks",
  "CADSaveAttribution", "CADSaveMask", "CADLoadAttribution", "CADLoadMask",
]);

app.registerExtension({
  name: "cad.summary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!CAD_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text?.[0];
      if (!text) return;
      if (!this.cadSummaryEl) {
        this.cadSummaryEl = document.createElement("pre");
        this.cadSummaryEl.className = "cad-summary";
        this.cadSummaryEl.style.cssText = "margin:0;font-size:10px;white-space:pre-wrap;overflow:auto;";
        this.addDOMWidget("cad_summary", "cad_summary", this.cadSummaryEl, { serialize: false });
      }
      this.cadSummaryEl.textContent = text;
    };
  },
});
