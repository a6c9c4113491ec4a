"""The web extension: every web/*.js parses, and cad_views.js builds the DOM the browser tests read
(class names, data-* attributes, captions) from real node UI messages. Runs the views in Node with a
minimal stand-in for `document`; the full frontend is covered by tests/browser."""
import json
import os
import shutil
import subprocess

import pytest
import torch

from cad_pack.cad_core import Attribution, AttributionInfo, select_components

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB = os.path.join(REPO, "web")
NODE = shutil.which("node")


@pytest.fixture(autouse=True)
def node_is_installed():
    """These tests must run wherever the suite runs (CI installs Node before them): no Node fails them loudly."""
    if NODE is None:
        pytest.fail("Node.js is not installed, so the web views cannot be tested: install it (Debian: apt-get "
                    "install nodejs; or bash scripts/setup_browser.sh) and run the tests again.")

# Just enough of the DOM for cad_views.js; `find` walks the tree the way querySelectorAll would.
FAKE_DOM = r"""
class FakeElement {
  constructor(tag) { this.tagName = tag.toUpperCase(); this.children = []; this.attributes = {};
                     this.style = { cssText: "" }; this.className = ""; this.textContent = ""; this.title = ""; }
  setAttribute(name, value) { this.attributes[name] = String(value); }
  getAttribute(name) { return this.attributes[name] ?? null; }
  appendChild(child) { this.children.push(child); return child; }
  append(...children) { this.children.push(...children); }
  replaceChildren(...children) { this.children = [...children]; }
}
globalThis.document = { createElement: (tag) => new FakeElement(tag) };
function find(root, className, found = []) {
  if (root.className.split(" ").includes(className)) found.push(root);
  for (const child of root.children) find(child, className, found);
  return found;
}
"""

HARNESS = FAKE_DOM + r"""
import { viewsFor } from "./cad_views.mjs";
const cases = JSON.parse(process.argv[2]);
const report = [];
for (const { node, message } of cases) {
  const parts = {};
  let runs = 0;
  for (; runs < 2; runs++) {          // a second execution must refill, not add
    for (const view of viewsFor(node, message)) {
      parts[view.kind] ??= document.createElement("div");
      parts[view.kind].height = view.render(parts[view.kind]);
    }
  }
  const out = { node };
  if (parts.chart) {
    const chart = parts.chart;
    out.chart = { className: chart.className, node: chart.getAttribute("data-cad-node"), height: chart.height,
                  caption: find(chart, "cad-chart-caption").map((e) => e.textContent),
                  labels: find(chart, "cad-block-label").map((e) => e.textContent),
                  shareBars: find(chart, "cad-bar-share").length,
                  blocks: find(chart, "cad-block").map((e) => e.attributes) };
  }
  if (parts.mask) out.mask = { className: parts.mask.className, attributes: parts.mask.attributes,
                               text: parts.mask.textContent };
  report.push(out);
}
console.log(JSON.stringify(report));
"""

KEY = "diffusion_model.{}.1.transformer_blocks.0.ff.net.2.weight"


def run_views(tmp_path, cases):
    shutil.copy(os.path.join(WEB, "cad_views.js"), tmp_path / "cad_views.mjs")   # .mjs: an ES module for Node
    (tmp_path / "harness.mjs").write_text(HARNESS)
    done = subprocess.run([NODE, str(tmp_path / "harness.mjs"), json.dumps(cases)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def attribution():
    g = torch.Generator().manual_seed(0)
    blocks = ["input_blocks.4", "middle_block", "output_blocks.7"]
    scores = {KEY.format(b): torch.randn(16, 8, generator=g) * 1e-4 for b in blocks}
    return Attribution(scores, "fp", AttributionInfo(objective="concept_gap", scope="ff"))


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(WEB) if f.endswith(".js")))
def test_web_file_parses_as_an_es_module(tmp_path, name):
    copy = tmp_path / (name[:-3] + ".mjs")
    shutil.copy(os.path.join(WEB, name), copy)
    done = subprocess.run([NODE, "--check", str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_attribute_chart_carries_the_raw_numbers_of_the_message(tmp_path):
    summary = attribution().summary()
    message = json.loads(json.dumps({"cad_summary": [summary], "text": ["..."]}))   # as the websocket sends it
    [out] = run_views(tmp_path, [{"node": "CADAttribute", "message": message}])
    chart = out["chart"]
    assert chart["className"] == "cad-chart" and chart["node"] == "CADAttribute"
    assert [b["data-block"] for b in chart["blocks"]] == ["input_blocks.4", "middle_block", "output_blocks.7"]
    for block, row in zip(chart["blocks"], summary["blocks"]):
        assert float(block["data-positive"]) == row["positive_mass"] > 0
        assert float(block["data-negative"]) == row["negative_mass"] < 0
        assert "data-share" not in block
    assert chart["labels"] == ["in 4", "mid", "out 7"] == [row["label"] for row in summary["blocks"]]
    positive, negative = summary["positive_mass"], summary["negative_mass"]
    assert chart["caption"] == [f"384 weights · +{positive:.2e} / \u2212{-negative:.2e}".replace("e-0", "e-")]
    assert chart["shareBars"] == 0 and "mask" not in out


def test_mask_count_shows_selected_of_scoped(tmp_path):
    mask = select_components(attribution(), "erase", 0.05, "global")
    message = json.loads(json.dumps({"cad_mask": [mask.summary()], "text": ["..."]}))
    [out] = run_views(tmp_path, [{"node": "CADEraseMask", "message": message}])
    attributes = out["mask"]["attributes"]
    assert out["mask"]["className"] == "cad-mask-count" and "chart" not in out
    assert attributes["data-selected"] == "19" and attributes["data-scoped"] == "384"
    assert float(attributes["data-percent"]) == mask.summary()["percent_of_scope"]
    assert out["mask"]["text"] == "19 of 384 weights (4.95%)"


def test_map_chart_adds_shares_and_the_mask_count(tmp_path):
    from cad_pack.cad_core import block_map

    scores = attribution()
    mask = select_components(scores, "erase", 0.05, "global")
    rows = block_map(scores, mask)
    big = {"selected": 16128, "scoped_weights": 327680, "percent_of_scope": 100 * 16128 / 327680}
    cases = [{"node": "CADAttributionMap", "message": json.loads(json.dumps({"cad_map": [rows]}))},
             {"node": "CADLoadMask", "message": {"cad_mask": [big]}}]
    mapped, loaded = run_views(tmp_path, cases)
    assert mapped["chart"]["node"] == "CADAttributionMap" and mapped["chart"]["shareBars"] == 3
    for block, row in zip(mapped["chart"]["blocks"], rows["rows"]):
        assert int(block["data-selected"]) == row["selected"] and float(block["data-share"]) == row["share"]
    assert sum(int(b["data-selected"]) for b in mapped["chart"]["blocks"]) == mask.count
    assert mapped["mask"]["attributes"]["data-selected"] == str(mask.count)
    assert loaded["mask"]["text"] == "16,128 of 327,680 weights (4.92%)"


def test_messages_without_cad_data_add_no_views(tmp_path):
    [out] = run_views(tmp_path, [{"node": "CADSaveMask", "message": {"text": ["saved models/cad/x.safetensors"]}}])
    assert out == {"node": "CADSaveMask"}


def test_the_extension_finds_its_nodes_by_the_folder_it_is_served_from(tmp_path):
    """cad_summary.js keeps no list of node ids: a node is the pack's when the backend's python_module for it is
    custom_nodes.<the folder its own URL is served from>."""
    shutil.copy(os.path.join(WEB, "cad_views.js"), tmp_path / "cad_views.mjs")
    urls = ["http://127.0.0.1:8188/extensions/comfyui-cad/cad_summary.js",
            "https://host/comfy/extensions/comfyui%20cad%20(copy)/cad_summary.js?v=3"]
    (tmp_path / "folder.mjs").write_text('import { packFolder } from "./cad_views.mjs";\n'
                                         'console.log(JSON.stringify(JSON.parse(process.argv[2]).map(packFolder)));')
    done = subprocess.run([NODE, str(tmp_path / "folder.mjs"), json.dumps(urls)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["comfyui-cad", "comfyui cad (copy)"]
    summary = open(os.path.join(WEB, "cad_summary.js"), encoding="utf-8").read()
    assert "nodeData.python_module !== PACK_MODULE" in summary and "CADAttribute" not in summary
