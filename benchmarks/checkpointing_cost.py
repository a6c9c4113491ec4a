"""What per-block gradient checkpointing saves and costs: the full-size SD1.5 UNet (random weights, fp32, CPU).

    .venv/bin/python -m benchmarks.checkpointing_cost [--latent 8 64] [--steps 2]

Each setting runs in a fresh child process (so one run's freed memory does not hide the next one's peak) through
the node path (bridge.attribute_model, ff scope, concept_gap): peak RSS above the loaded model, wall time,
the bytes autograd saved for backward outside checkpointed blocks, and whether alpha equals the run without
checkpointing; for `auto`, what it decided on this machine and from which estimate. Writes benchmarks/results/<name>.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import _common as C

SETTINGS = ("off", "on", "auto")


def child(args):
    """One attribution in this process; prints a JSON line with its measurements."""
    torch, mp, latent, pos, base, model_rss = C.sd15_child(args)
    from cad_pack.nodes.bridge import attribute_model
    from cad_pack.cad_core import AttributionRequest
    saved = {"bytes": 0}

    def pack(t):
        saved["bytes"] += t.numel() * t.element_size()
        return t

    with torch.inference_mode(), C.PeakRSS() as mem, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        start = time.perf_counter()
        request = AttributionRequest(steps=args.steps, gradient_checkpointing=args.setting)
        result = attribute_model(mp, pos, base, C.empty_latent(latent), request)
        seconds = time.perf_counter() - start
    torch.save(result.scores, args.scores)
    print(json.dumps({"setting": args.setting, "seconds": seconds, "peak_above_model": mem.peak - model_rss,
                      "model_rss": model_rss, "saved_bytes": saved["bytes"], "calls": result.info.unet_calls,
                      "checkpointed": result.info.gradient_checkpointing,
                      "estimate_mb": result.info.kept_without_checkpointing_mb,
                      "reason": result.info.checkpointing_reason,
                      "free_mb": result.info.free_memory_mb, "machine": C.machine()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent", type=int, nargs="+", default=[8, 64], help="latent sides (8 = 64 px, 64 = 512 px)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--tiny", action="store_true", help="reduced UNet (a dry run of the script)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--name", default="checkpointing_cost_cpu")
    ap.add_argument("--setting", help=argparse.SUPPRESS)
    ap.add_argument("--scores", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.setting:
        return child(args)

    import tempfile
    import torch
    sections, machine = [], None
    for latent in args.latent:
        runs = {}
        with tempfile.TemporaryDirectory() as tmp:
            for setting in args.settings:
                scores = os.path.join(tmp, f"{setting}.pt")
                cmd = [sys.executable, "-m", __spec__.name, "--latent", str(latent), "--steps", str(args.steps), "--threads",
                       str(args.threads), "--setting", setting, "--scores", scores] + (["--tiny"] if args.tiny else [])
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode:
                    sys.exit(f"the '{setting}' run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
                runs[setting] = json.loads(done.stdout.strip().splitlines()[-1])
                runs[setting]["scores"] = torch.load(scores)
                print(f"{latent * 8} px {setting:4s}: {runs[setting]['seconds']:.1f} s, peak above model "
                      f"{C.mib(runs[setting]['peak_above_model'])}", flush=True)
        machine = runs["off"]["machine"]
        sections.append(section(latent, args, runs))
    size = "reduced (--tiny)" if args.tiny else "full-size"
    m = machine
    report = "\n".join([
        f"# Gradient checkpointing: {size} SD1.5 UNet, T={args.steps}, ff scope, CPU fp32", "",
        f"Written by `benchmarks/checkpointing_cost.py` on {time.strftime('%Y-%m-%d')}; {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']} ({m['torch_threads']} threads), ComfyUI {m['comfyui']}, load average {m['load_average']}. "
        f"Each setting in its own process.", "", *sections,
        "'Saved for backward' counts what autograd keeps outside the checkpointed blocks (block inputs and the "
        "layers outside blocks), summed over the run's differentiated forwards; peak RSS also holds CAD's own state "
        "(the fp32 gradient sums of the scope: this fp32 model's probes read its weights in place, no copies) and the "
        "weight copies ComfyUI casts. Wall times of single short runs on a shared machine are noisy (tens of percent).",
        ""])
    os.makedirs(C.RESULTS, exist_ok=True)
    with open(os.path.join(C.RESULTS, f"{args.name}.md"), "w") as f:
        f.write(report)
    print(report)


def section(latent, args, runs):
    import torch
    off, on = runs["off"], runs["on"]
    worst = max(float((on["scores"][k] - off["scores"][k]).abs().max() / off["scores"][k].abs().max().clamp(min=1e-30))
                for k in off["scores"])
    identical = all(torch.equal(on["scores"][k], off["scores"][k]) for k in off["scores"])

    def decided(s):
        r = runs[s]
        if r["estimate_mb"] is None:
            return ("yes" if r["checkpointed"] else "no") + (f" ({r['reason']})" if r.get("reason") else "")
        return (f"{'yes' if r['checkpointed'] else 'no'} (a step would keep ~{r['estimate_mb']:,} MiB for backward without it, measured, "
                f"{r['free_mb']:,} MiB free)")

    rows = [[s, decided(s), f"{r['seconds']:.1f} s", C.mib(r["peak_above_model"]), C.mib(r["saved_bytes"]),
             f"{r['calls']['forward_backward']} + {r['calls']['forward_no_grad']}"] for s, r in runs.items()]
    return "\n".join([
        f"## {latent * 8} px (latent {latent}x{latent}); model RSS {C.mib(off['model_rss'])}", "",
        C.table(["gradient_checkpointing", "blocks checkpointed", "wall (whole attribution)",
                 "peak RSS above the loaded model", "saved for backward (sum over the run)",
                 "fwd+bwd + no-grad calls"], rows), "",
        f"With checkpointing: peak memory {on['peak_above_model'] / max(off['peak_above_model'], 1):.2f}x, wall time "
        f"{on['seconds'] / off['seconds']:.2f}x of without. alpha: "
        + ("bit-identical." if identical else f"largest difference {worst:.2g} of the largest |alpha| (float rounding)."),
        ""])


if __name__ == "__main__":
    main()
