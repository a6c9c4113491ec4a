"""The README's supported-models table and objectives list, rendered from the pack's records
(cad_core/families.py, cad_core/objectives/), and its "CAD and its peers" table, rendered from
benchmarks/results/erase_vs_peers.json. tests/test_readme.py fails when the README differs.

    python -m scripts.readme_tables            # print both
    python -m scripts.readme_tables --write    # put them into README.md between their markers
"""
import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
MARKERS = {"families": ("<!-- families table: scripts/readme_tables.py -->", "<!-- end of families table -->"),
           "objectives": ("<!-- objectives list: scripts/readme_tables.py -->", "<!-- end of objectives list -->"),
           "peers": ("<!-- peers table: scripts/readme_tables.py -->", "<!-- end of peers table -->")}
PEERS_RESULT = os.path.join(REPO, "benchmarks", "results", "erase_vs_peers.json")
# What each method is, in the README's words
PEER_NAMES = {"cad-robust": "**CAD Erase Concept, robust** (the default)",
              "cad-closed-form": "CAD Erase Concept, closed form (K/V only)",
              "salun": "SalUn (saliency-masked fine-tuning)", "uce": "UCE (closed form on every K/V matrix)",
              "rece": "RECE (UCE + its adversarial embeddings)", "esd-u": "ESD-u (fine-tuned non-cross-attention)",
              "esd-x": "ESD-x (fine-tuned cross-attention)"}


def _core():
    """cad_core alone (plain torch): importable without ComfyUI."""
    import importlib.util
    if "cad_readme_core" not in sys.modules:
        spec = importlib.util.spec_from_file_location("cad_readme_core", os.path.join(REPO, "cad_core", "__init__.py"),
                                                      submodule_search_locations=[os.path.join(REPO, "cad_core")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["cad_readme_core"] = module
        spec.loader.exec_module(module)
    return sys.modules["cad_readme_core"]


def families_table() -> str:
    core = _core()
    lines = ["| family | ComfyUI model | noising | `ff` preset | `attention` preset | conditioning needs | chart labels "
             "| tested |", "|---|---|---|---|---|---|---|---|"]
    for f in (*core.FAMILIES, core.GENERIC):
        labels = ", ".join(label for _, label in f.blocks) or "block names as found"
        lines.append(f"| {f.display} | {f.comfy_models} | {f.noising} | {f.ff_names} | {f.attention_names} | "
                     f"{f.conditioning or 'text only'} | {labels} | {f.evidence} |")
    return "\n".join(lines)


def objectives_list() -> str:
    core = _core()
    return "\n".join(f"- `{o.name}` (for {o.purpose}): {o.formula}. {o.effect}"
                     for o in core.OBJECTIVES.values())


def peers_table() -> str:
    """Each method's chosen setting on the test split, per shape: target after / other shapes kept (lowest) / ASR of
    the strong embedding attack; then the mean ASR of each attack, the shapes meeting the selective bar and the mean
    H; a first line with the unedited model attacked from a neutral start (the attacks' strength check)."""
    import json
    with open(PEERS_RESULT) as f:
        data = json.load(f)
    a = data["settings"]
    rows = [r for r in data["rows"] if r["split"] == "test"]
    shapes = list(a["targets"])
    strong, stated = a["strong_steps"], a["stated_steps"]
    lines = ["| method (setting chosen on validation) | " + " | ".join(shapes) + f" | mean ASR emb {stated} / "
             f"{strong} | mean ASR cond {stated} / {strong} | mean ASR RECE | shapes erased with the rest kept | "
             "mean H |", "|---|" + "---|" * (len(shapes) + 5)]
    ceiling = {(r["target"], r["attack"]): r for r in data["rows"] if r["split"] == "ceiling"}
    if ceiling:
        def neutral(kind):
            found = [ceiling[(s, kind)] for s in shapes if (s, kind) in ceiling]
            return "" if not found else (f"{_mean(r['asr_stated'] for r in found):.2f} / "
                                         f"{_mean(r['asr_strong'] for r in found):.2f}")
        lines.append("| unedited model, attacked from a neutral start (how strong the attacks are) | " +
                     " | ".join(f"- / - / {ceiling[(s, 'embedding')]['asr_strong']:.2f}" if (s, "embedding") in ceiling
                                else "" for s in shapes) +
                     f" | {neutral('embedding')} | {neutral('conditioning')} | | | |")
    for method in PEER_NAMES:
        mine = {r["target"]: r for r in rows if r["method"] == method}
        if set(mine) != set(shapes):
            continue
        rs = [mine[s] for s in shapes]
        bar = sum(bool(r["target_acc"] <= 0.10 and r["others_min_keep"] >= 0.90 and r["colour_min"] >= 0.90
                       and r["distance_vs_random"] <= 2.0) for r in rs)
        cells = [f"{r['target_acc']:.2f} / {r['others_min_keep']:.2f} / {r['asr_embedding_strong']:.2f}" for r in rs]
        lines.append(f"| {PEER_NAMES[method]} | " + " | ".join(cells) +
                     f" | {_mean(r['asr_embedding_stated'] for r in rs):.2f} / "
                     f"{_mean(r['asr_embedding_strong'] for r in rs):.2f} | "
                     f"{_mean(r['asr_conditioning_stated'] for r in rs):.2f} / "
                     f"{_mean(r['asr_conditioning_strong'] for r in rs):.2f} | {_mean(r['asr_rece'] for r in rs):.2f} | "
                     f"{bar} of {len(shapes)} | {_mean(r['hmean'] for r in rs):.2f} |")
    return "\n".join(lines)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def rendered() -> dict:
    return {"families": families_table(), "objectives": objectives_list(), "peers": peers_table()}


def in_readme(text: str) -> dict:
    """What the README holds between each pair of markers (None where the markers are missing)."""
    out = {}
    for name, (begin, end) in MARKERS.items():
        found = re.search(re.escape(begin) + r"\n(.*?)\n" + re.escape(end), text, re.S)
        out[name] = found.group(1) if found else None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    tables = rendered()
    if not args.write:
        print("\n\n".join(tables.values()))
        return
    with open(README) as f:
        text = f.read()
    for name, (begin, end) in MARKERS.items():
        if begin not in text:
            raise SystemExit(f"README.md has no marker {begin!r}")
        text = re.sub(re.escape(begin) + r"\n.*?\n" + re.escape(end), lambda m: f"{begin}\n{tables[name]}\n{end}",
                      text, flags=re.S)
    with open(README, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
