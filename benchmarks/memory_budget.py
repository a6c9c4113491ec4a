"""Does memory_budget_mb hold? The full-size SD1.5 UNet (random weights, fp32, CPU), ff scope, under a budget.

    .venv/bin/python -m benchmarks.memory_budget [--latent 32 64] [--steps 1] [--fraction 0.5]

Each row runs in a fresh child process: it measures what one differentiated step keeps for backward (the same
measurement CAD Attribute makes), sets memory_budget_mb to that plus `--fraction` of the scope's per-weight state
(so the scope is split into passes), then runs the attribution through the node path (bridge.attribute_model)
and records the peak RSS above the loaded model. The budget holds when that peak is at most the budget. Peak RSS
also holds ComfyUI's own no-grad forwards and whatever glibc keeps of freed memory, so it can only overstate what
CAD allocates. Writes benchmarks/results/<name>.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import _common as C

SETTINGS = ("off", "on")


def child(args):
    """One budgeted attribution in this process; prints a JSON line with its measurements."""
    torch, mp, latent, pos, base, model_rss = C.sd15_child(args)
    from cad_pack.cad_core import resolve_scope
    from cad_pack.cad_core.budget import MB, scope_bytes
    from cad_pack.nodes.bridge import attribute_model, patchable_weights
    from cad_pack.cad_core import AttributionRequest
    shapes = dict(patchable_weights(mp))
    keys = resolve_scope(list(shapes.items()), "ff")
    state = scope_bytes([shapes[k] for k in keys])
    activation = C.step_backward_bytes(mp, pos, base, latent, args.setting == "on")
    budget_mb = round((activation + args.fraction * state) / MB, 1)
    from torch.profiler import ProfilerActivity, profile
    with torch.inference_mode(), C.PeakRSS() as mem, profile(activities=[ProfilerActivity.CPU],
                                                             profile_memory=True) as prof:
        start = time.perf_counter()
        request = AttributionRequest(steps=args.steps, memory_budget_mb=budget_mb, gradient_checkpointing=args.setting)
        result = attribute_model(mp, pos, base, C.empty_latent(latent), request)
        seconds = time.perf_counter() - start
    info = result.info
    print(json.dumps({"peak_live": peak_live_bytes(prof),"setting": args.setting, "latent": latent, "seconds": seconds, "model_rss": model_rss,
                      "peak_above_model": mem.peak - model_rss, "budget_mb": budget_mb, "state_mb": state / MB,
                      "activation_mb": info.activation_mb, "peak_scope_mb": info.peak_scope_mb,
                      "passes": info.passes or 1, "checkpointed": info.gradient_checkpointing,
                      "machine": C.machine(),
                      "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}))


def peak_live_bytes(prof) -> int:
    """The most bytes torch's CPU allocator had handed out at once during the profiled block (op by op, in time
    order): what was really allocated, without the allocator's own slack that peak RSS also holds."""
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent", type=int, nargs="+", default=[32, 64], help="latent sides (32 = 256 px, 64 = 512 px)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--fraction", type=float, default=0.5, help="share of the scope's state the budget leaves room for")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--tiny", action="store_true", help="reduced UNet (a dry run of the script)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--name", default="memory_budget_cpu")
    ap.add_argument("--setting", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.setting:
        return child(args)

    runs = []
    for latent in args.latent:
        for setting in args.settings:
            cmd = [sys.executable, "-m", __spec__.name, "--latent", str(latent), "--steps", str(args.steps), "--fraction",
                   str(args.fraction), "--threads", str(args.threads), "--setting", setting] + (
                ["--tiny"] if args.tiny else [])
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"the {latent * 8} px '{setting}' run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append(run)
            print(f"{latent * 8} px {setting:3s}: budget {run['budget_mb']:,.0f} MiB, peak above model "
                  f"{C.mib(run['peak_above_model'])}, {run['passes']} passes, {run['seconds']:.1f} s", flush=True)
    m = runs[0]["machine"]
    rows = [[f"{r['latent'] * 8} px", r["setting"], f"{r['budget_mb']:,.0f} MiB", f"{r['activation_mb']:,.0f} MiB",
             f"{r['peak_scope_mb']:,.0f} MiB of {r['state_mb']:,.0f} MiB", r["passes"], C.mib(r["peak_live"]),
             f"{r['peak_live'] / 2**20 / r['budget_mb']:.2f}",
             "yes" if r["peak_live"] / 2**20 <= r["budget_mb"] else "**no**", C.mib(r["peak_above_model"]),
             f"{r['peak_above_model'] / 2**20 / r['budget_mb']:.2f}", f"{r['seconds']:.1f} s"] for r in runs]
    size = "reduced (--tiny)" if args.tiny else "full-size"
    malloc = runs[0]["malloc_env"]
    report = "\n".join([
        f"# Memory budget: {size} SD1.5 UNet, T={args.steps}, ff scope, CPU fp32", "",
        f"Written by `benchmarks/memory_budget.py` on {time.strftime('%Y-%m-%d')}; {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']} ({m['torch_threads']} threads), ComfyUI {m['comfyui']}, load average {m['load_average']}; "
        f"model RSS {C.mib(runs[0]['model_rss'])}; glibc settings: "
        f"{', '.join(f'{k}={v}' for k, v in malloc.items()) or 'defaults'}. Each row in its own process.", "",
        f"memory_budget_mb is set to what one differentiated step keeps for backward (measured by CAD's own "
        f"measurement, with gradient checkpointing as in the row) plus {args.fraction:g} of the ff scope's per-weight "
        f"state (8 bytes per weight), so the scope is split into passes.", "",
        C.table(["size", "gradient_checkpointing", "memory_budget_mb", "of it: one step's backward (measured)",
                 "scope state per pass", "passes", "peak allocated (torch)", "allocated / budget", "within budget",
                 "peak RSS above the loaded model", "RSS / budget", "wall (profiled)"], rows), "",
        "'Peak allocated' is the most memory torch's CPU allocator had handed out at once during the attribution "
        "(torch.profiler with profile_memory, op by op): everything the run allocated, ComfyUI's no-grad forwards of "
        "the base branch included. Peak RSS also holds what glibc keeps of freed memory, and the measurement's "
        "own profiler records. The budget holds where the peak allocated is within it.", ""])
    os.makedirs(C.RESULTS, exist_ok=True)
    with open(os.path.join(C.RESULTS, f"{args.name}.md"), "w") as f:
        f.write(report)
    with open(os.path.join(C.RESULTS, f"{args.name}.json"), "w") as f:
        json.dump({"runs": runs, "args": vars(args)}, f, indent=1)
    print(report)


if __name__ == "__main__":
    main()
