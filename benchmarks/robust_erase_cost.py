"""What CAD Erase Concept's robust mode would cost on a full-size SD1.5 / SDXL: an ESTIMATE, computed from measured
per-call costs, not a measurement of the robust erase itself.

    .venv/bin/python -m benchmarks.robust_erase_cost      (seconds; writes benchmarks/results/robust_erase_cost.md)

The per-call costs are the gpu_check run's (benchmarks/results/gpu_check_<GPU>.json: one UNet forward, and one
forward + backward, at batch 1 and the family's usual resolution, fp16), and the numbers of calls are counted from
the robust erase's own settings (cad_core.EraseSettings) and its code (cad_core/robust_erase.py,
nodes/bridge/robust_erase.py):

- pictures: one sampling run per erased and per kept prompt, `pictures` at a time, the attribution's steps with
  CFG (2 forwards per picture and step);
- the pool of training points: POOL_PER_PICTURE noise draws per picture; 2 forwards each for the concept's
  pictures (guide and prompt), 2 for the kept ones (prompt and empty prompt);
- training: per step, the adversary's forward + backward and the forget (2) and retain (1) forwards + backwards,
  each at `batch` pictures.

Calls at batch b are priced as b calls at batch 1 (a GPU is usually cheaper per picture at larger batches, so this
leans high). Memory is not estimated here beyond what the method adds: an fp32 copy of the UNet (4 bytes per
parameter) with Adam's two moments for the trained matrices, beside the loaded model.
"""
import argparse
import glob
import json
import os

from benchmarks._common import RESULTS, table
from cad_core.erase_settings import DEFAULT_ERASE
from cad_core.robust_erase import POOL_PER_PICTURE

# The typed prompts of a typical erase: 5 erased, 15 kept (as cad_3 types them on the toy world), 20 steps.
ERASED_PROMPTS, KEPT_PROMPTS, SAMPLING_STEPS = 5, 15, 20


def estimate(unit: dict, settings=DEFAULT_ERASE) -> dict:
    fwd, fwd_bwd = unit["no_grad_forward_s"], unit["forward_backward_s"]
    prompts = ERASED_PROMPTS + KEPT_PROMPTS
    pictures_s = prompts * SAMPLING_STEPS * 2 * settings.pictures * fwd
    pool_s = prompts * settings.pictures * POOL_PER_PICTURE * 2 * fwd
    train_s = settings.train_steps * 4 * settings.batch * fwd_bwd
    return {"pictures_s": pictures_s, "pool_s": pool_s, "train_s": train_s, "total_s": pictures_s + pool_s + train_s}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(RESULTS, "robust_erase_cost.md"))
    a = ap.parse_args(argv)
    sources = sorted(glob.glob(os.path.join(RESULTS, "gpu_check_*.json")))
    if not sources:
        raise SystemExit(f"no gpu_check_*.json in {RESULTS}: run make bench-gpu on a GPU first")
    rows, data = [], {}
    for path in sources:
        with open(path) as f:
            run = json.load(f)
        for family, v in run["families"].items():
            unit = v.get("unit_costs")
            if not unit:
                continue
            e = estimate(unit)
            params = v.get("params", 0)
            data[f"{os.path.basename(path)}:{family}"] = {"unit_costs": unit, **e, "params": params}
            rows.append([family, f"{v.get('px')} px", run["machine"].get("gpu", "?"), f"{unit['no_grad_forward_s']:.3f}",
                         f"{unit['forward_backward_s']:.3f}", f"{e['pictures_s'] / 60:.1f}", f"{e['pool_s'] / 60:.1f}",
                         f"{e['train_s'] / 60:.1f}", f"{e['total_s'] / 60:.1f}",
                         f"{params * 4 / 2 ** 30:.1f}", os.path.basename(path)])
    s = DEFAULT_ERASE
    lines = ["# CAD Erase Concept, robust mode, at full size: an estimate", "",
             "**Estimated, not measured**: the calls the robust erase makes with its default settings, priced at the "
             "per-call costs a GPU run measured (see the script's docstring for the counting). Calls at batch b are "
             "priced as b calls at batch 1, which leans high on a GPU.", "",
             f"Settings (cad_core.EraseSettings defaults): {s.train_steps} training steps at batch {s.batch}, "
             f"{s.pictures} pictures per prompt, {POOL_PER_PICTURE} noise draws per picture; a typical erase of "
             f"{ERASED_PROMPTS} erased and {KEPT_PROMPTS} kept prompts, {SAMPLING_STEPS} sampling steps with CFG.", "",
             table(["family", "resolution", "GPU", "forward s", "forward+backward s", "pictures min", "pool min",
                    "training min", "total min (estimate)", "fp32 copy GiB", "per-call costs from"], rows), "",
             "The fp32 copy is what the method holds beside the loaded model while it trains (GiB = 2^30 bytes); "
             "Adam's moments for the trained matrices come on top. The per-call costs were measured with the pack "
             "version that wrote the source file."]
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump({"settings": s.as_dict(), "pool_per_picture": POOL_PER_PICTURE, "estimates": data}, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
