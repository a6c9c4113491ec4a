"""Fewer timesteps, same mask? Erase masks of the toy world attributed with T = 5, 10, 20 and 50 visited steps.

    .venv/bin/python -m benchmarks.steps_study [--steps 5 10 20 50] [--per-colour 4]

For every shape: the erase mask (per_row, ratio 0.05, concept_gap summed over the four colours, as in the efficacy
table) from each T; the overlap of each mask with the largest T's (Jaccard of the selected weights); and each
mask's efficacy (the target's accuracy, the other shapes' and the colours') next to a random control of the
largest T's size. Evaluation images use seeds the attributions never used. Writes
benchmarks/results/steps_study.{md,json}.
"""
import argparse
import json
import os
import platform
import time

import torch

from benchmarks._common import RESULTS
from scripts.pack_bootstrap import import_pack, toyworld_on_cpu

import_pack(cpu=toyworld_on_cpu())  # ComfyUI and the pack, before anything imports from them
from cad_pack.nodes.toyworld.evaluate import ToyWorld, edited, erase_mask, matched_control  # noqa: E402
from cad_pack.nodes.toyworld.world import COLOUR_NAMES, SHAPES  # noqa: E402



def jaccard(a, b) -> float:
    """|A ∩ B| / |A ∪ B| over (matrix, flat index) pairs."""
    inter = union = 0
    for key in set(a.indices) | set(b.indices):
        x = set(a.indices.get(key, torch.empty(0, dtype=torch.long)).tolist())
        y = set(b.indices.get(key, torch.empty(0, dtype=torch.long)).tolist())
        inter += len(x & y)
        union += len(x | y)
    return inter / union if union else 1.0


def retention(table, before, target):
    others = [s for s in SHAPES if s != target]
    return {"others_mean": sum(table[s]["shape"] for s in others) / len(others),
            "others_min_keep": min(table[s]["shape"] / max(before[s]["shape"], 1e-9) for s in others),
            "colour_min_keep": min(table[s]["colour"] / max(before[s]["colour"], 1e-9) for s in SHAPES)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--per-colour", type=int, default=4, help="evaluation images per colour per shape")
    ap.add_argument("--eval-seed", type=int, default=10_000,
                    help="first evaluation seed (attribution seeds are 0-3: one per colour)")
    ap.add_argument("--targets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="steps_study")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    started = time.time()
    world = ToyWorld.load()
    before = world.accuracy_table(world.model, a.per_colour, seed=a.eval_seed)
    steps = sorted(a.steps)
    rows, overlaps, seconds = [], [], {}
    for target in a.targets:
        masks = {}
        for t in steps:
            t0 = time.perf_counter()
            attribution = world.attribute(target, steps=t)
            seconds.setdefault(t, []).append(time.perf_counter() - t0)
            masks[t] = erase_mask(attribution, a.ratio, "per_row")
        largest = masks[steps[-1]]
        for t in steps:
            overlaps.append({"target": target, "steps": t, "weights": masks[t].count,
                             "jaccard_vs_largest": jaccard(masks[t], largest),
                             "jaccard_vs_previous": None if t == steps[0] else
                             jaccard(masks[t], masks[steps[steps.index(t) - 1]])})
        variants = [(f"CAD erase, T={t}", masks[t]) for t in steps]
        variants.append((f"control: random, T={steps[-1]} count per matrix", matched_control(world.model, largest,
                                                                                            "random")))
        for label, mask in variants:
            table = world.accuracy_table(edited(world.model, mask), a.per_colour, seed=a.eval_seed)
            rows.append({"target": target, "variant": label, "weights": mask.count,
                         "target_acc": table[target]["shape"], **retention(table, before, target)})
            print(rows[-1], flush=True)
        write(a, before, rows, overlaps, seconds, time.time() - started)
    print(open(os.path.join(RESULTS, f"{a.name}.md")).read())


def write(a, before, rows, overlaps, seconds, elapsed):
    steps = sorted(a.steps)
    mean_overlap = {t: sum(o["jaccard_vs_largest"] for o in overlaps if o["steps"] == t) /
                    max(1, sum(1 for o in overlaps if o["steps"] == t)) for t in steps}
    lines = [
        "# Fewer timesteps, same mask? (toy world)", "",
        f"Written by `benchmarks/steps_study.py` on {time.strftime('%Y-%m-%d')}: {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); run time "
        f"{elapsed / 60:.1f} min. Attribution: concept_gap, guidance 3, schedule single, summed over the "
        f"{len(COLOUR_NAMES)} colours of 'a <colour> <shape>' against 'a <colour>', attribution seeds 0-"
        f"{len(COLOUR_NAMES) - 1}; mask: erase, per_row, ratio {a.ratio}. Evaluation: {a.per_colour} images per "
        f"colour per shape ({a.per_colour * len(COLOUR_NAMES)} per shape), seeds {a.eval_seed} + 1000 x colour "
        f"(+ image index), none of which an attribution used.", "",
        "## Overlap of the masks (Jaccard of the selected weights)", "",
        "| target | T | weights | Jaccard vs T=" + str(steps[-1]) + " | Jaccard vs previous T |", "|---|---|---|---|---|"]
    lines += [f"| {o['target']} | {o['steps']} | {o['weights']:,} | {o['jaccard_vs_largest']:.3f} | "
              + ("" if o["jaccard_vs_previous"] is None else f"{o['jaccard_vs_previous']:.3f}") + " |"
              for o in overlaps]
    lines += ["", "Mean Jaccard against T=" + str(steps[-1]) + ": "
              + ", ".join(f"T={t}: {mean_overlap[t]:.3f}" for t in steps) + ".", "",
              "Attribution time per shape (4 attributions, CPU): "
              + ", ".join(f"T={t}: {sum(v) / len(v):.1f} s" for t, v in sorted(seconds.items())) + ".", "",
              "## Efficacy of each mask", "",
              "Unedited: " + ", ".join(f"{s} {before[s]['shape']:.2f}" for s in SHAPES) + " (shape accuracy).", "",
              "| target | variant | weights | target acc | other shapes (mean) | other shapes kept (min) | "
              "colour kept (min) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['variant']} | {r['weights']:,} | {r['target_acc']:.2f} | {r['others_mean']:.2f} | "
              f"{r['others_min_keep']:.2f} | {r['colour_min_keep']:.2f} |" for r in rows]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{a.name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(RESULTS, f"{a.name}.json"), "w") as f:
        json.dump({"settings": vars(a), "before": before, "overlaps": overlaps, "rows": rows,
                   "mean_jaccard_vs_largest": mean_overlap,
                   "attribution_seconds": {t: sum(v) / len(v) for t, v in seconds.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
