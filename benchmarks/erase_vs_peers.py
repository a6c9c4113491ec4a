"""Erase one shape and keep the rest: CAD beside its peers (UCE, ESD-x) on the toy world, tuned on a validation
split and reported on a test split that no choice looked at.

    .venv/bin/python -m benchmarks.erase_vs_peers [--quick]      (make erase-vs-peers, ~40 min on 2 cores)

Every method has the same tuning budget: six settings, each tried on every shape on the validation split. The
setting a method keeps is the one with the highest mean, over the shapes, of the harmonic mean of UA, IRA (lowest
kept) and CRA (lowest kept); settings within 0.02 of it count as tied and the one that moves the spared pictures
least wins. Only that setting is run on the test split, with its own attribution / training seeds and its own
evaluation seeds, beside its controls: a random change of the same Frobenius norm in the same matrices for a dense
edit, a random choice (and one by |w|) of the same number of entries per matrix for a sparse one.

Methods: `uce` (as published: every cross-attention K/V), `uce-overshoot` (UCE given the pack's overshoot lever),
`esd-x` (fine-tuned cross-attention), `cad-zero-kv` (the pack's K/V erase with the other shapes protected:
CAD Erase Mask, protect_mode subtract) and `cad-located` (the closed form on the K/V matrices that hold 95% of the
shape's positive CAD mass). Writes benchmarks/results/erase_vs_peers.json and the .md rendered from it.
"""
import argparse
import json
import os
import time
from dataclasses import dataclass

import torch

from benchmarks._common import RESULTS, PeakRSS, machine_line, table
from scripts.pack_bootstrap import import_pack, toyworld_on_cpu

import_pack(cpu=toyworld_on_cpu())  # ComfyUI and the pack, before anything imports from them
from benchmarks import peers  # noqa: E402
from cad_pack.nodes.toyworld.evaluate import (CFG, SAMPLE_STEPS, SAMPLER, SCHEDULER, ToyWorld, edited,  # noqa: E402
                                              matched_control)
from cad_pack.nodes.toyworld.world import COLOUR_NAMES, SHAPES  # noqa: E402

from cad_pack.cad_core import select_protected  # noqa: E402
from cad_pack.cad_core.closed_form import located_keys  # noqa: E402
from cad_pack.nodes.toyworld.model import WEIGHTS_FILE  # noqa: E402

KV_REGEX = r"attn2\.to_[kv]"
LOCATED_MASS_SHARE = 0.95  # fixed before this benchmark, on pictures neither split uses (docs/method.md)
TARGET_MAX, KEEP_MIN, DISTANCE_FACTOR, UCE_DISTANCE_SLACK = 0.10, 0.90, 2.0, 1.10
TIE = 0.02

# Six settings per method: the same tuning budget for each
GRIDS = {
    "uce": [{"rows": r, "preserve": p} for r in (12, 77) for p in (0.1, 0.3, 1.0)],
    "uce-overshoot": [{"rows": r, "overshoot": o} for r in (12, 77) for o in (0.0, 0.5, 1.0)],
    "esd-x": [{"lr": lr, "steps": s} for lr in (1e-4, 3e-4) for s in (50, 100, 200)],
    "cad-zero-kv": [{"ratio": q, "protect_weight": pw} for q in (0.05, 0.1, 0.2) for pw in (1.0, 2.0)],
    "cad-located": [{"rows": r, "overshoot": o} for r in (12, 77) for o in (0.0, 0.5, 1.0)],
}
DESCRIPTIONS = {
    "uce": "UCE as published: closed form on every cross-attention K and V (14 matrices), guide 'a <colour>' / '', "
           "ridge 0.01; tuned: text rows used, preserve weight",
    "uce-overshoot": "UCE with the pack's overshoot lever (guide rows pushed past the guide, away from the shape), "
                     "preserve 1, ridge 0.01; tuned: text rows, overshoot",
    "esd-x": "ESD-x: Adam on every cross-attention weight toward the original's negatively guided prediction "
             "(eta 1, batch 8); tuned: learning rate, steps",
    "cad-zero-kv": "CAD Erase Mask on K/V (regex attn2\\.to_[kv]), per_matrix, the three other shapes protected "
                   "(subtract): zeroes the selected weights; tuned: ratio, protect weight",
    "cad-located": f"CAD-located closed form: the same solve as uce-overshoot on the K/V matrices holding "
                   f"{LOCATED_MASS_SHARE:.0%} of the shape's positive CAD mass; tuned: text rows, overshoot",
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: one shape, one picture per prompt, two settings per method, short ESD runs")
    ap.add_argument("--methods", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--targets", nargs="+", default=None, choices=list(SHAPES))
    ap.add_argument("--validation-per-colour", type=int, default=4, help="pictures per prompt on the validation split")
    ap.add_argument("--test-per-colour", type=int, default=8, help="pictures per prompt on the test split")
    ap.add_argument("--validation-seed", type=int, default=1_000,
                    help="validation attribution / ESD training seeds start here")
    ap.add_argument("--validation-eval-seed", type=int, default=20_000,
                    help="validation pictures: this + 1000 x colour index")
    ap.add_argument("--test-seed", type=int, default=40_000, help="test attribution / ESD training seeds start here")
    ap.add_argument("--test-eval-seed", type=int, default=60_000, help="test pictures: this + 1000 x colour index")
    ap.add_argument("--weights", default=WEIGHTS_FILE)
    ap.add_argument("--out", default=os.path.join(RESULTS, "erase_vs_peers.md"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="render --out's Markdown again from its JSON")
    a = ap.parse_args(argv)
    a.targets = a.targets or (["square"] if a.quick else list(SHAPES))
    if a.quick:
        a.validation_per_colour = a.test_per_colour = 1
    seeds = {"validation attribution": training_seeds(a.validation_seed),
             "validation pictures": eval_seeds(a.validation_eval_seed),
             "test attribution": training_seeds(a.test_seed), "test pictures": eval_seeds(a.test_eval_seed)}
    names = list(seeds)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            if set(seeds[x]) & set(seeds[y]):
                ap.error(f"the {x} seeds overlap the {y} seeds: every split and role needs seeds of its own")
    return a


def training_seeds(start) -> range:
    """The noise seeds a split's attributions and ESD runs draw: start + shape index (+ prompt index for ESD's
    trajectories, one per prompt naming the shape)."""
    return range(start, start + len(SHAPES) + len(peers.erase_prompts(SHAPES[0])) - 1)


def eval_seeds(start) -> list:
    """The seeds of a grid's pictures (ToyWorld.grid: one noise seed per colour, start + 1000 x colour index)."""
    return [start + 1000 * c for c in range(len(COLOUR_NAMES))]


@dataclass
class Edit:
    """One method's change of the model: dense weight changes or a sparse mask, and what it cost to make."""
    deltas: dict | None = None
    mask: object = None
    seconds: float = 0.0
    peak_mib: float = 0.0

    @property
    def weights_changed(self) -> int:
        if self.mask is not None:
            return self.mask.count
        return sum(int((d != 0).sum()) for d in self.deltas.values())

    def apply(self, model):
        return edited(model, self.mask) if self.mask is not None else peers.apply_deltas(model, self.deltas)


class Split:
    """One split's seeds and pictures: the unedited grid, and the attributions its CAD methods share."""

    def __init__(self, name, world, seed, eval_seed, per_colour):
        self.name, self.world, self.seed, self.eval_seed, self.per_colour = name, world, seed, eval_seed, per_colour
        self.before = self.grid(world.model)
        self._attributions = {}

    def grid(self, model):
        return self.world.grid(model, self.per_colour, self.eval_seed)

    def attribution(self, shape):
        """(attribution, seconds, peak MiB): 'a <shape>' against '' on K/V, the split's seed + shape index."""
        if shape not in self._attributions:
            with PeakRSS() as mem:
                start = time.perf_counter()
                att = self.world.attribute(shape, scope="regex", scope_regex=KV_REGEX, contrast="empty",
                                           seed=self.seed + SHAPES.index(shape))
            self._attributions[shape] = (att, time.perf_counter() - start, (mem.peak - mem.start) / 2 ** 20)
        return self._attributions[shape]


def build(method, split, target, setting, quick=False) -> Edit:
    """The method's edit for `target` with `setting`, timed (attributions count at their first use's cost)."""
    world = split.world
    extra_seconds, extra_peak = 0.0, 0.0
    with PeakRSS() as mem:
        start = time.perf_counter()
        if method == "uce":
            edit = Edit(peers.uce(world, target, rows=setting["rows"], preserve=setting["preserve"]))
        elif method == "uce-overshoot":
            edit = Edit(peers.uce(world, target, rows=setting["rows"], overshoot=setting["overshoot"]))
        elif method == "esd-x":
            steps = 5 if quick else setting["steps"]
            edit = Edit(peers.esd_x(world, target, steps=steps, lr=setting["lr"],
                                    seed=split.seed + SHAPES.index(target)))
        elif method == "cad-located":
            att, extra_seconds, extra_peak = split.attribution(target)
            keys = located_keys(att, peers.kv_keys(world.model), LOCATED_MASS_SHARE)
            edit = Edit(peers.uce(world, target, keys, rows=setting["rows"], overshoot=setting["overshoot"]))
        elif method == "cad-zero-kv":
            parts = [split.attribution(s) for s in [target] + [s for s in SHAPES if s != target]]
            extra_seconds, extra_peak = sum(p[1] for p in parts), max(p[2] for p in parts)
            edit = Edit(mask=select_protected(parts[0][0], "erase", setting["ratio"], "per_matrix",
                                              [p[0] for p in parts[1:]], weight=setting["protect_weight"]))
        else:
            raise ValueError(method)
        edit.seconds = time.perf_counter() - start + extra_seconds
    edit.peak_mib = max((mem.peak - mem.start) / 2 ** 20, extra_peak)
    return edit


def harmonic_mean(values) -> float:
    values = [max(0.0, min(1.0, v)) for v in values]
    return 0.0 if min(values) <= 0 else len(values) / sum(1 / v for v in values)


def measure(split, model, target) -> dict:
    """UnlearnCanvas's measures on the toy world, and how far the pictures not naming the target moved."""
    grid = split.grid(model)
    after, was = grid.by_shape(), split.before.by_shape()
    others = [s for s in SHAPES if s != target]
    row = {"target_before": was[target]["shape"], "target_acc": after[target]["shape"],
           "others_mean": sum(after[s]["shape"] for s in others) / len(others),
           "others_min_keep": min(after[s]["shape"] / max(was[s]["shape"], 1e-9) for s in others),
           "colour_min": min(after[s]["colour"] / max(was[s]["colour"], 1e-9) for s in SHAPES),
           "spared_distance": grid.distance(split.before, keep=lambda shape, colour: shape != target)}
    row["ua"] = 1.0 - row["target_acc"]
    row["hmean"] = harmonic_mean([row["ua"], row["others_min_keep"], row["colour_min"]])
    return row


class Run:
    def __init__(self, a):
        self.a, self.started, self.rows, self.chosen = a, time.time(), [], {}
        torch.set_num_threads(a.threads)
        self.world = ToyWorld.load(a.weights)

    def record(self, **row):
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    def validate(self):
        split = Split("validation", self.world, self.a.validation_seed, self.a.validation_eval_seed,
                      self.a.validation_per_colour)
        self.before = {"validation": split.before.by_shape()}
        for method in self.a.methods:
            grid = GRIDS[method][:2] if self.a.quick else GRIDS[method]
            for setting in grid:
                for target in self.a.targets:
                    edit = build(method, split, target, setting, self.a.quick)
                    self.record(method=method, target=target, split="validation", settings=setting,
                                weights_changed=edit.weights_changed, seconds=round(edit.seconds, 3),
                                peak_mib=round(edit.peak_mib, 1), chosen=False, distance_vs_random=None,
                                **measure(split, edit.apply(self.world.model), target))
            self.chosen[method] = choose(self.rows, method)
            self.write()

    def test(self):
        split = Split("test", self.world, self.a.test_seed, self.a.test_eval_seed, self.a.test_per_colour)
        self.before["test"] = split.before.by_shape()
        for method in self.a.methods:
            setting = self.chosen[method]
            for target in self.a.targets:
                edit = build(method, split, target, setting, self.a.quick)
                row = self.record(method=method, target=target, split="test", settings=setting,
                                  weights_changed=edit.weights_changed, seconds=round(edit.seconds, 3),
                                  peak_mib=round(edit.peak_mib, 1), chosen=True,
                                  **measure(split, edit.apply(self.world.model), target))
                for kind, control in controls(self.world.model, edit):
                    c = self.record(method=f"control-{kind}", target=target, split="test",
                                    settings={"of": method, **setting}, weights_changed=control.weights_changed,
                                    seconds=None, peak_mib=None, chosen=False, distance_vs_random=None,
                                    **measure(split, control.apply(self.world.model), target))
                    if kind == "random":
                        row["distance_vs_random"] = row["spared_distance"] / max(c["spared_distance"], 1e-9)
            self.write()

    def write(self):
        data = {"settings": {k: v for k, v in vars(self.a).items()}, "machine": machine_line(self.a.threads),
                "grids": {m: GRIDS[m] for m in self.a.methods}, "descriptions": DESCRIPTIONS,
                "located_mass_share": LOCATED_MASS_SHARE, "before": self.before, "chosen": self.chosen,
                "rows": self.rows, "seconds": time.time() - self.started}
        os.makedirs(os.path.dirname(self.a.out) or ".", exist_ok=True)
        with open(os.path.splitext(self.a.out)[0] + ".json", "w") as f:
            json.dump(data, f, indent=1)
        with open(self.a.out, "w") as f:
            f.write(render(data))


def controls(model, edit):
    """The controls of an edit: random of the same size (and, for a sparse edit, chosen by |w| alone)."""
    if edit.mask is not None:
        return [(kind, Edit(mask=matched_control(model, edit.mask, kind))) for kind in ("random", "magnitude")]
    return [("random", Edit(peers.random_deltas(edit.deltas)))]


def choose(rows, method) -> dict:
    """The method's setting with the best mean harmonic mean over the shapes on validation (ties within TIE: the
    one that moves the spared pictures least)."""
    by_setting = {}
    for r in rows:
        if r["method"] == method and r["split"] == "validation":
            by_setting.setdefault(json.dumps(r["settings"], sort_keys=True), []).append(r)
    scored = [(sum(r["hmean"] for r in rs) / len(rs), sum(r["spared_distance"] for r in rs) / len(rs), key)
              for key, rs in by_setting.items()]
    best = max(s[0] for s in scored)
    return json.loads(min((s for s in scored if s[0] >= best - TIE), key=lambda s: s[1])[2])


def judge(test_rows) -> dict:
    """Per test row of a method: the bar, and how it compares with UCE from the same run on the same shape."""
    uce = {r["target"]: r for r in test_rows if r["method"] == "uce"}
    for r in test_rows:
        ratio = r.get("distance_vs_random")
        r["meets_bar"] = bool(r["target_acc"] <= TARGET_MAX and r["others_min_keep"] >= KEEP_MIN
                              and r["colour_min"] >= KEEP_MIN and ratio is not None and ratio <= DISTANCE_FACTOR)
        u = uce.get(r["target"])
        r["beats_uce"] = None if u is None or r["method"] == "uce" else bool(
            r["hmean"] >= u["hmean"] - 1e-9 and r["spared_distance"] <= UCE_DISTANCE_SLACK * u["spared_distance"])
    return {r["method"]: r for r in test_rows}


def render(data) -> str:
    a = argparse.Namespace(**data["settings"])
    rows = data["rows"]
    val = [r for r in rows if r["split"] == "validation"]
    test = [r for r in rows if r["split"] == "test" and not r["method"].startswith("control")]
    judge(test)
    ctrl = [r for r in rows if r["split"] == "test" and r["method"].startswith("control")]
    n_val, n_test = a.validation_per_colour * len(COLOUR_NAMES), a.test_per_colour * len(COLOUR_NAMES)

    def seeds(start):
        return ", ".join(str(start + 1000 * c) for c in range(len(COLOUR_NAMES)))

    lines = [
        "# Erasing one shape: CAD and its peers on the toy world", "",
        f"Machine: {data['machine']}. Weights: {os.path.basename(a.weights)}. Run time {data['seconds'] / 60:.1f} "
        "min.", "",
        f"- Pictures: 'a <colour> <shape>' prompts, {SAMPLER}/{SCHEDULER}, {SAMPLE_STEPS} steps, CFG {CFG:g}; "
        f"validation {a.validation_per_colour} per prompt ({n_val} per shape), test {a.test_per_colour} per prompt "
        f"({n_test} per shape).",
        f"- Validation split: attributions and ESD training use seeds {_span(training_seeds(a.validation_seed))} "
        "(seed + shape index, + prompt index for ESD's trajectories); pictures use seeds "
        f"{a.validation_eval_seed} + 1000 x colour index ({seeds(a.validation_eval_seed)}).",
        f"- Test split: attributions and ESD training use seeds {_span(training_seeds(a.test_seed))}; pictures "
        f"use seeds {a.test_eval_seed} + 1000 x colour index ({seeds(a.test_eval_seed)}). No choice looked at it: "
        "each method's setting was fixed on validation and only that setting ran here.",
        "- Tuning budget: six settings per method, each tried on every shape on validation. Kept: the highest mean "
        f"over the shapes of the harmonic mean of UA, IRA and CRA; within {TIE} of it, the one that moved the spared "
        "pictures least.",
        "- UA = 1 - target accuracy; IRA = accuracy kept by the other shapes (after / before: lowest, and the mean "
        "accuracy after); CRA = colour accuracy kept (lowest over the shapes); H = harmonic mean of UA, IRA (lowest) "
        "and CRA. 'moved' = mean absolute pixel difference (0-1) between the edited and the unedited model's pictures "
        "of the prompts not naming the shape, same seeds; 'x random' = that over the random control's: a random change "
        "of the same Frobenius norm in the same matrices (dense edits), or a random choice of the same number of "
        "entries per matrix (sparse ones).",
        f"- The bar: target <= {TARGET_MAX:.2f} (UA >= {1 - TARGET_MAX:.2f}), every other shape >= {KEEP_MIN:.0%} of "
        f"its own accuracy, CRA >= {KEEP_MIN:.0%}, moved <= {DISTANCE_FACTOR:g}x random. 'vs UCE': H at least UCE's "
        f"and moved within {UCE_DISTANCE_SLACK - 1:.0%} of UCE's, same shape, same run.",
        "- Seconds and peak memory: making the edit on this CPU (CAD: the attributions it needs included); peak = "
        "resident memory above the process's before.", "",
        "## Methods", "", *[f"- `{m}`: {data['descriptions'][m]}." for m in data["grids"]], "",
        "## Unedited model", "",
        table(["shape", "validation shape acc", "test shape acc", "test colour acc"],
              [[s, f"{data['before']['validation'][s]['shape']:.2f}",
                f"{data['before'].get('test', {}).get(s, {}).get('shape', float('nan')):.2f}",
                f"{data['before'].get('test', {}).get(s, {}).get('colour', float('nan')):.2f}"] for s in SHAPES
               if s in data["before"]["validation"]]), "",
    ]
    if test:
        lines += ["## Test split: each method's chosen setting", "",
                  table(["method", "shape", "target after", "UA", "IRA lowest", "IRA mean", "CRA", "H", "moved",
                         "x random", "weights changed", "s", "peak MiB", "meets the bar", "vs UCE"],
                        [[r["method"], r["target"], f"{r['target_acc']:.2f}", f"{r['ua']:.2f}",
                          f"{r['others_min_keep']:.2f}", f"{r['others_mean']:.2f}", f"{r['colour_min']:.2f}",
                          f"{r['hmean']:.2f}", f"{r['spared_distance']:.3f}", _x(r.get("distance_vs_random")),
                          f"{r['weights_changed']:,}", f"{r['seconds']:.2f}", f"{r['peak_mib']:.0f}",
                          "yes" if r["meets_bar"] else "no",
                          "" if r["beats_uce"] is None else ("yes" if r["beats_uce"] else "no")] for r in test]), "",
                  "Per method over the shapes (test):", "",
                  table(["method", "chosen setting", "shapes meeting the bar", "shapes at least as good as UCE",
                         "mean H", "mean moved"],
                        [[m, _setting(data["chosen"][m]), f"{sum(r['meets_bar'] for r in rs)} of {len(rs)}",
                          "" if m == "uce" else f"{sum(bool(r['beats_uce']) for r in rs)} of {len(rs)}",
                          f"{sum(r['hmean'] for r in rs) / len(rs):.2f}",
                          f"{sum(r['spared_distance'] for r in rs) / len(rs):.3f}"]
                         for m, rs in _by_method(test).items()]), "",
                  "Controls on the test split (same size as the chosen edit):", "",
                  table(["control", "of", "shape", "target after", "IRA lowest", "CRA", "moved", "weights changed"],
                        [[r["method"].removeprefix("control-"), r["settings"]["of"], r["target"],
                          f"{r['target_acc']:.2f}", f"{r['others_min_keep']:.2f}", f"{r['colour_min']:.2f}",
                          f"{r['spared_distance']:.3f}", f"{r['weights_changed']:,}"] for r in ctrl]), ""]
    lines += ["## Validation split: every setting", "",
              table(["method", "setting", "shape", "target after", "IRA lowest", "CRA", "H", "moved", "chosen"],
                    [[r["method"], _setting(r["settings"]), r["target"], f"{r['target_acc']:.2f}",
                      f"{r['others_min_keep']:.2f}", f"{r['colour_min']:.2f}", f"{r['hmean']:.2f}",
                      f"{r['spared_distance']:.3f}", "yes" if data["chosen"].get(r["method"]) == r["settings"] else ""]
                     for r in val]), ""]
    return "\n".join(lines)


def _by_method(rows):
    out = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r)
    return out


def _setting(s) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())


def _span(seeds: range) -> str:
    return f"{seeds[0]}-{seeds[-1]}"


def _x(v) -> str:
    return "" if v is None else f"{v:.1f}x"


def main():
    a = parse_args()
    if a.report_only:
        with open(os.path.splitext(a.out)[0] + ".json") as f:
            data = json.load(f)
        with open(a.out, "w") as f:
            f.write(render(data))
        return
    run = Run(a)
    run.validate()
    run.test()
    run.write()
    print(f"wrote {a.out} in {(time.time() - run.started) / 60:.1f} min")


if __name__ == "__main__":
    main()
