"""The attribution benchmark on a GPU: SD1.5 at 512x512 and SDXL at 1024x1024, fp16, random weights, real
architectures, T = 50, both schedules; UNet calls, wall time, peak VRAM, apply and sampling overhead.
Meant to finish in about 10 minutes on one H100/H200 (a time guard extrapolates what would not fit).

    python benchmarks/gpu_check.py                      # on the GPU machine (writes benchmarks/results/)
    python benchmarks/gpu_check.py --dry-run            # anywhere: CPU, reduced models, T=2 (checks the script)
    bash benchmarks/gpu_check.sh                        # the same, with the repo's .venv and ComfyUI

For each family: one `single` attribution at T (measured), the `reference` schedule at T if the fitted
per-call costs say it fits the remaining time (otherwise extrapolated from a measured reference run at a
small T, and marked so), peak VRAM (torch.cuda.max_memory_allocated) split into weights, CAD's fp32
gradient sums (on the GPU; the fp32 weight copies the probes keep live in CPU RAM) and the rest
(activations + cast weight copies held for backward), the time to build and apply an erase mask, and
sampling speed with vs without the mask.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

FAMILIES = {"sd15": 512, "sdxl": 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, reduced models, tiny latents, T=2")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--time-budget-s", type=float, default=540.0, help="stop measuring (extrapolate) past this")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--sample-repeats", type=int, default=3)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    dry = args.dry_run
    if dry:
        args.steps = min(args.steps, 2)
        args.sample_steps = min(args.sample_steps, 2)
        args.sample_repeats = 1

    C.setup(cpu=dry)
    import torch
    import comfy.model_management as mm
    from attribution_cost import CostModel, StepClock, stub_counts
    from cad_pack.cad_core import resolve_scope, select_components
    from cad_pack.nodes.bridge import attribute_with_budget
    from cad_pack.nodes.bridge import apply_mask, patchable_weights

    cuda = torch.cuda.is_available() and not dry
    if not dry and not cuda:
        raise SystemExit("No CUDA device: run with --dry-run to check the script on CPU.")
    started = time.perf_counter()
    deadline = started + args.time_budget_s
    log = lambda *a: print(f"[{time.perf_counter() - started:7.1f}s]", *a, flush=True)  # noqa: E731
    info = C.machine(cuda=cuda)
    log("machine", info)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def vram_peak_reset():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() if cuda else 0

    def vram_peak():
        return torch.cuda.max_memory_allocated() if cuda else 0

    results = {"machine": info, "dry_run": dry, "steps": args.steps, "families": {}}
    for family in args.families:
        px = 64 if dry else FAMILIES[family]
        latent_px = px // 8
        mp = C.build_unet(family, torch.float16, tiny=dry)
        params = sum(p.numel() for p in mp.model.diffusion_model.parameters())
        scope = resolve_scope(patchable_weights(mp), "ff")
        shapes = dict(patchable_weights(mp))
        scoped = sum(math.prod(shapes[k]) for k in scope)
        pos, neg = C.conditioning(family, 1, px), C.conditioning(family, 2, px)
        with torch.inference_mode():
            mm.load_models_gpu([mp], force_full_load=True)
        weights_vram = torch.cuda.memory_allocated() if cuda else params * 2
        log(f"{family}: {params:,} params ({mp.model.get_dtype()}, compute {mp.model.manual_cast_dtype or mp.model.get_dtype()}), "
            f"ff scope {len(scope)} matrices / {scoped:,} weights, {px}x{px}")

        runs = {}

        def run(t, schedule, **kw):
            base = vram_peak_reset()
            clock = StepClock()

            def progress(done, total):
                sync()  # so each unit's timestamp includes its GPU work
                clock(done, total)

            with torch.inference_mode():
                sync()
                a, seconds = C.timed(attribute_with_budget, mp, pos, neg, C.empty_latent(latent_px),
                                     objective="concept_gap", steps=t, guidance=3.0, seed=0, samples=1, scope="ff",
                                     schedule=schedule, on_progress=progress, **kw)
                sync()
            calls = {k: a.meta["unet_calls"][k] for k in ("forward_backward", "forward_no_grad")}
            runs[(t, schedule)] = {"seconds": seconds, "calls": calls, "peak_vram": vram_peak(), "base_vram": base,
                                   "steps": t, "schedule": schedule, "stamps": clock.stamps}
            log(f"  {schedule:9s} T={t:3d}: {seconds:7.1f}s calls {calls} peak VRAM {C.mib(vram_peak())}")
            return a

        calib_t = 3 if dry else 4
        run(calib_t, "reference")
        attribution = run(args.steps, "single")
        cost = CostModel(list(runs.values()))
        log("  unit costs:", cost.describe())
        ref_counts = stub_counts(args.steps, "reference")
        predicted = cost.predict(args.steps, "reference")
        if time.perf_counter() + 1.15 * predicted < deadline:
            run(args.steps, "reference")
            reference = {"seconds": runs[(args.steps, "reference")]["seconds"], "measured": True}
        else:
            log(f"  reference T={args.steps}: predicted {predicted:.0f}s does not fit; extrapolated")
            reference = {"seconds": predicted, "measured": False}
        single = runs[(args.steps, "single")]
        sc = stub_counts(args.steps, "single")

        # apply and sampling
        mask, select_s = C.timed(select_components, attribution, "erase", 0.05 if dry else 0.001, "per_row")
        patched, apply_s = C.timed(apply_mask, mp, mask, 1.0)
        with torch.inference_mode():
            sync()
            _, patch_s = C.timed(mm.load_models_gpu, [patched], force_full_load=True)
            sync()

        def sample(model):
            import comfy.sample
            with torch.inference_mode():
                latent = C.empty_latent(latent_px)["samples"]
                noise = comfy.sample.prepare_noise(latent, 1)
                sync()
                _, s = C.timed(comfy.sample.sample, model, noise, args.sample_steps, 7.0, "euler", "normal", pos, neg,
                               latent, seed=1, disable_pbar=True)
                sync()
            return s

        plain_t, masked_t = [], []
        sample(mp)
        sample(patched)
        for _ in range(args.sample_repeats):
            sample(mp)
            plain_t.append(sample(mp))
            sample(patched)
            masked_t.append(sample(patched))
        plain_med, masked_med = statistics.median(plain_t), statistics.median(masked_t)
        log(f"  mask {mask.count:,}: select {select_s:.2f}s apply {apply_s:.3f}s patch {patch_s:.2f}s; "
            f"sampling {plain_med:.2f}s vs {masked_med:.2f}s")

        results["families"][family] = {
            "px": px, "params": params, "scope_weights": scoped, "single": single,
            "single_counts": sc, "reference_counts": ref_counts, "reference": reference,
            "unit_costs": {"visit_s": cost.visit, "guided_step_s": cost.guided, "fixed_s": cost.fixed,
                           "forward_backward_s": cost.forward_backward, "no_grad_forward_s": cost.no_grad_forward},
            "vram": {"weights": weights_vram, "cad_grad_sums": 4 * scoped, "peak_single": single["peak_vram"]},
            "cpu_weight_copies": 4 * scoped,
            "apply": {"selected": mask.count, "select_s": select_s, "apply_s": apply_s, "patch_at_load_s": patch_s},
            "sampling": {"steps": args.sample_steps, "plain_s": plain_t, "masked_s": masked_t,
                         "overhead_pct": 100 * (masked_med / plain_med - 1)},
        }
        del attribution, patched, mp
        mm.unload_all_models()
        mm.soft_empty_cache()

    # report
    rows, mem_rows, apply_rows = [], [], []
    for family, r in results["families"].items():
        s, ref = r["single"], r["reference"]
        calls_s = sum(r["single_counts"].values())
        calls_r = sum(r["reference_counts"].values())
        rows.append([f"{family} {r['px']}x{r['px']}", args.steps,
                     f"{r['single_counts']['forward_backward']} + {r['single_counts']['forward_no_grad']}",
                     f"{r['reference_counts']['forward_backward']} + {r['reference_counts']['forward_no_grad']}",
                     f"{calls_r / calls_s:.1f}x", f"{s['seconds']:.1f} s",
                     f"{ref['seconds']:.1f} s" + ("" if ref["measured"] else " (extrapolated)"),
                     f"{ref['seconds'] / s['seconds']:.1f}x"])
        v = r["vram"]
        mem_rows.append([family, C.mib(v["weights"]), C.mib(v["cad_grad_sums"]), C.mib(v["peak_single"]),
                         C.mib(v["peak_single"] - v["weights"] - v["cad_grad_sums"]), C.mib(r["cpu_weight_copies"])])
        a, sm = r["apply"], r["sampling"]
        apply_rows.append([family, f"{a['selected']:,}", f"{a['select_s']:.2f} s", f"{a['apply_s']:.3f} s",
                           f"{a['patch_at_load_s']:.2f} s", f"{statistics.median(sm['plain_s']):.2f} s",
                           f"{statistics.median(sm['masked_s']):.2f} s ({sm['overhead_pct']:+.1f}%)"])
    title = "DRY RUN (CPU, reduced models; not a benchmark)" if dry else info.get("gpu", "GPU")
    report = "\n".join([
        f"# CAD attribution on a GPU: {title}\n",
        f"Machine: {json.dumps(info)}. fp16 weights, random values, ComfyUI's SD1.5 / SDXL UNet configurations, "
        f"scope ff, concept_gap, guidance 3.\n",
        C.table(["model", "T", "single calls (fwd+bwd + fwd)", "reference calls", "calls ratio", "single wall",
                 "reference wall", "wall ratio"], rows), "",
        C.table(["model", "weights (VRAM)", "CAD fp32 grad sums (VRAM)", "peak VRAM, single", "rest (activations + "
                 "cast copies)", "probe weight copies (CPU RAM)"], mem_rows), "",
        C.table(["model", "mask weights", "build mask", "Apply CAD Mask", "patch at load",
                 f"sampling {args.sample_steps} steps", "with mask"], apply_rows), ""])
    print("\n" + report)
    os.makedirs(C.RESULTS, exist_ok=True)
    name = args.name or ("gpu_check_dry_run" if dry else "gpu_check_" + info.get("gpu", "gpu").split(",")[0].replace(" ", "_"))
    with open(os.path.join(C.RESULTS, name + ".md"), "w") as f:
        f.write(report)
    with open(os.path.join(C.RESULTS, name + ".json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"written to {os.path.join(C.RESULTS, name)}.md/.json")


if __name__ == "__main__":
    main()
