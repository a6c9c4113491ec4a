"""The attribution benchmark on a GPU: SD1.5 at 512x512 and SDXL at 1024x1024, fp16, random weights, real
architectures, T = 50, both schedules; UNet calls, wall time, peak VRAM, apply and sampling overhead.
Meant to finish in about 8 minutes on one H100/H200 (a time guard extrapolates what would not fit).

Issue 12's targets are measured as such: a default-settings `single` run (T=4: peak memory does not grow with T)
happens on an emulated smaller card: a real cap (torch.cuda.set_per_process_memory_fraction: 4 GiB for SD1.5,
10 GiB for SDXL) and ComfyUI told the same free memory (so its decisions, and gradient_checkpointing=auto's, are
those of such a card); an out-of-memory there is reported. Next to it, uncapped: the T=50 run (speed, on this
card's own auto decision), and T=4 runs with gradient_checkpointing off and on (peak and step time). Each run's
time is split into set-up + first step, a steady step and the end, and the steady step is set against
the same UNet's plain forward+backward+forward measured in the same process (plain_step: torch autograd on an
ordinary copy of the UNet, no ComfyUI, no CAD). Sampling with vs without a mask: 20 timed calls each, median and
interquartile range.

Flux.1-dev at full size runs on its own (`--families flux`, about 5 minutes): random weights in ComfyUI's Flux-dev
configuration stored in fp8 e4m3 and computed in bf16 (as users load it), 1024x1024, T=20, ff scope, under a real
24 GiB cap with memory_budget_mb = what the cap leaves after the weights (less a headroom for ComfyUI's own no-grad
forwards): time, peak, passes, and what CAD measured one step to keep for backward.

    python -m benchmarks.gpu_check                      # on the GPU machine (writes benchmarks/results/)
    python -m benchmarks.gpu_check --families flux      # Flux.1-dev fp8 under 24 GiB (-> gpu_check_<GPU>_flux.md)
    python -m benchmarks.gpu_check --dry-run            # anywhere: CPU, reduced models, T=2 (checks the script)
    bash benchmarks/gpu_check.sh                        # the same, with the repo's .venv and ComfyUI

For each family: one `single` attribution at T (measured), the `reference` schedule at T if the fitted
per-call costs say it fits the remaining time (otherwise extrapolated from a measured reference run at a
small T, and marked so), peak VRAM (torch.cuda.max_memory_allocated) split into weights, CAD's fp32
gradient sums (on the GPU; the fp32 weight copies the probes keep live in CPU RAM) and the rest
(activations + cast weight copies held for backward), the time to build and apply an erase mask, and
sampling speed with vs without the mask.
"""
import argparse
import contextlib
import json
import math
import os
import statistics
import time

from benchmarks import _common as C

FAMILIES = {"sd15": 512, "sdxl": 1024}
CAPS_GIB = {"sd15": 4.0, "sdxl": 10.0}    # the targets: peak memory with default settings
FLUX = {"px": 1024, "steps": 20, "cap_gib": 24.0,   # the target: Flux.1-dev, fp8 weights, completes under 24 GiB
        "headroom_gib": 1.5}   # left outside memory_budget_mb: ComfyUI's no-grad forwards, latents, cast buffers


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, reduced models, tiny latents, T=2")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=[*FAMILIES, "flux"],
                    help="sd15, sdxl (default) and/or flux (Flux.1-dev fp8 under a 24 GiB cap; best run alone)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--time-budget-s", type=float, default=540.0, help="stop measuring (extrapolate) past this")
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("--sample-repeats", type=int, default=20, help="timed sampling calls per model (plain, masked)")
    ap.add_argument("--cap-gib", type=float, nargs="+", default=None,
                    help="memory cap per family for the default run (default: sd15 4, sdxl 10); 0 = none")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    if args.dry_run:
        args.steps = min(args.steps, 2)
        args.sample_steps = min(args.sample_steps, 2)
        args.sample_repeats = 4
    return args


class Session:
    """The run's clock, log and device: synchronising and peak-memory reading are no-ops off CUDA."""

    def __init__(self, cuda: bool, time_budget_s: float):
        import torch
        self.torch, self.cuda = torch, cuda
        self.started = time.perf_counter()
        self.deadline = self.started + time_budget_s

    def log(self, *parts):
        print(f"[{time.perf_counter() - self.started:7.1f}s]", *parts, flush=True)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def vram_peak_reset(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        return self.torch.cuda.memory_allocated() if self.cuda else 0

    def vram_peak(self):
        return self.torch.cuda.max_memory_allocated() if self.cuda else 0


def main():
    args = parse_args()
    dry = args.dry_run
    caps = dict(zip(args.families, args.cap_gib)) if args.cap_gib else {f: CAPS_GIB[f] for f in args.families if f in CAPS_GIB}
    C.setup(cpu=dry)
    import torch
    cuda = torch.cuda.is_available() and not dry
    if not dry and not cuda:
        raise SystemExit("No CUDA device: run with --dry-run to check the script on CPU.")
    session = Session(cuda, args.time_budget_s)
    info = C.machine(cuda=cuda)
    session.log("machine", info)
    results = {"machine": info, "dry_run": dry, "steps": args.steps, "families": {}}
    if "flux" in args.families:
        results["flux"] = flux_check(dry, cuda, session.log, session.sync)
    for family in [f for f in args.families if f != "flux"]:
        results["families"][family] = measure_family(family, args, session, caps.get(family, 0.0))
    report(results, args, dry, info)


def measure_family(family, args, session, cap_gib) -> dict:
    """One UNet family: attribution time (both schedules, T=args.steps; the reference extrapolated when it does not
    fit the time budget), peak memory under the cap and with checkpointing off/on, the plain step it is compared
    with, and the cost of applying a mask and sampling with it."""
    import torch
    import comfy.model_management as mm
    from benchmarks.attribution_cost import CostModel, StepClock, stub_counts
    from cad_pack.cad_core import AttributionRequest, resolve_scope
    from cad_pack.nodes.bridge import attribute_model, patchable_weights
    dry, cuda = args.dry_run, session.cuda
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
    session.log(f"{family}: {params:,} params ({mp.model.get_dtype()}, compute "
                f"{mp.model.manual_cast_dtype or mp.model.get_dtype()}), ff scope {len(scope)} matrices / {scoped:,} weights, {px}x{px}")

    runs = {}

    def run(t, schedule, label=None, cap_gib=0.0, gradient_checkpointing="auto"):
        base = session.vram_peak_reset()
        clock = StepClock()

        def progress(done, total):
            session.sync()  # so each unit's timestamp includes its GPU work
            clock(done, total)

        try:
            with emulated_card(cap_gib if cuda else 0.0), torch.inference_mode():
                session.sync()
                t0 = time.perf_counter()
                request = AttributionRequest(steps=t, schedule=schedule,
                                             gradient_checkpointing=gradient_checkpointing)
                a = attribute_model(mp, pos, neg, C.empty_latent(latent_px), request, on_progress=progress)
                session.sync()
                seconds = time.perf_counter() - t0
        except torch.cuda.OutOfMemoryError as e:
            session.log(f"  {schedule} T={t} under a {cap_gib:g} GiB cap: out of memory ({str(e)[:120]})")
            runs[label or (t, schedule)] = {"oom": True, "cap_gib": cap_gib, "peak_vram": session.vram_peak()}
            return None
        calls = {k: a.info.unet_calls[k] for k in ("forward_backward", "forward_no_grad")}
        stamps = clock.stamps
        steady = statistics.median(b - a_ for a_, b in zip(stamps[1:], stamps[2:])) if len(stamps) > 2 else None
        runs[label or (t, schedule)] = {
            "seconds": seconds, "calls": calls, "peak_vram": session.vram_peak(), "base_vram": base, "steps": t,
            "schedule": schedule, "stamps": stamps, "cap_gib": cap_gib, "oom": False,
            "checkpointing": a.info.gradient_checkpointing,
            "profile": {"setup_and_first_step_s": stamps[0] - t0 if stamps else None, "steady_step_s": steady,
                        "after_last_step_s": t0 + seconds - stamps[-1] if stamps else None}}
        session.log(f"  {label or schedule:9s} T={t:3d}: {seconds:7.1f}s calls {calls} peak VRAM "
                    f"{C.mib(session.vram_peak())} profile {runs[label or (t, schedule)]['profile']}")
        return a

    calib_t = 3 if dry else 4
    floor = plain_step_seconds(mp, family, latent_px, pos, session.sync, repeats=2 if dry else 5)
    session.log(f"  plain forward+backward+forward (torch autograd, no CAD): {floor:.3f} s")
    run(calib_t, "reference")
    attribution = run(args.steps, "single")
    run(calib_t, "single", label="capped", cap_gib=cap_gib)
    run(calib_t, "single", label="checkpointing off", gradient_checkpointing="off")
    run(calib_t, "single", label="checkpointing on", gradient_checkpointing="on")
    capped, no_checkpointing, checkpointed = (runs.pop(k) for k in ("capped", "checkpointing off",
                                                                   "checkpointing on"))
    cost = CostModel([r for r in runs.values() if "stamps" in r])
    session.log("  unit costs:", cost.describe())
    ref_counts = stub_counts(args.steps, "reference")
    predicted = cost.predict(args.steps, "reference")
    if time.perf_counter() + 1.15 * predicted < session.deadline:
        run(args.steps, "reference")
        reference = {"seconds": runs[(args.steps, "reference")]["seconds"], "measured": True}
    else:
        session.log(f"  reference T={args.steps}: predicted {predicted:.0f}s does not fit; extrapolated")
        reference = {"seconds": predicted, "measured": False}
    single = runs[(args.steps, "single")]
    sc = stub_counts(args.steps, "single")

    apply, sampling = mask_apply_and_sampling(mp, attribution, pos, neg, latent_px, args, session)
    measured = {
        "px": px, "params": params, "scope_weights": scoped, "single": single, "cap_gib": cap_gib,
        "capped": capped, "no_checkpointing": no_checkpointing, "checkpointed": checkpointed,
        "plain_step_s": floor,
        "single_counts": sc, "reference_counts": ref_counts, "reference": reference,
        "unit_costs": {"visit_s": cost.visit, "guided_step_s": cost.guided, "fixed_s": cost.fixed,
                       "forward_backward_s": cost.forward_backward, "no_grad_forward_s": cost.no_grad_forward},
        "vram": {"weights": weights_vram, "cad_grad_sums": 4 * scoped, "peak_single": single["peak_vram"],
                 "peak_capped": capped.get("peak_vram"), "peak_no_checkpointing": no_checkpointing.get("peak_vram"),
                 "peak_checkpointed": checkpointed.get("peak_vram")},
        "cpu_weight_copies": 0 if mp.model.manual_cast_dtype is None else 4 * scoped,
        "apply": apply, "sampling": sampling,
    }
    del attribution, mp
    mm.unload_all_models()
    mm.soft_empty_cache()
    return measured


def mask_apply_and_sampling(mp, attribution, pos, neg, latent_px, args, session):
    """Build an erase mask, apply it, and time sampling with and without it (interleaved)."""
    import torch
    import comfy.model_management as mm
    from cad_pack.cad_core import select_components
    from cad_pack.nodes.bridge import apply_mask
    dry = args.dry_run
    mask, select_s = C.timed(select_components, attribution, "erase", 0.05 if dry else 0.001, "per_row")
    patched, apply_s = C.timed(apply_mask, mp, mask, 1.0)
    with torch.inference_mode():
        session.sync()
        _, patch_s = C.timed(mm.load_models_gpu, [patched], force_full_load=True)
        session.sync()

    def sample(model):
        import comfy.sample
        with torch.inference_mode():
            latent = C.empty_latent(latent_px)["samples"]
            noise = comfy.sample.prepare_noise(latent, 1)
            session.sync()
            _, s = C.timed(comfy.sample.sample, model, noise, args.sample_steps, 7.0, "euler", "normal", pos, neg,
                           latent, seed=1, disable_pbar=True)
            session.sync()
        return s

    plain_t, masked_t = [], []
    sample(mp)
    sample(patched)
    for _ in range(args.sample_repeats):   # interleaved, each after a (re)load, so drift hits both alike
        sample(mp)
        plain_t.append(sample(mp))
        sample(patched)
        masked_t.append(sample(patched))
    plain_med, masked_med = statistics.median(plain_t), statistics.median(masked_t)
    session.log(f"  mask {mask.count:,}: select {select_s:.2f}s apply {apply_s:.3f}s patch {patch_s:.2f}s; "
                f"sampling {plain_med:.2f}s vs {masked_med:.2f}s")
    del patched
    return ({"selected": mask.count, "select_s": select_s, "apply_s": apply_s, "patch_at_load_s": patch_s},
            {"steps": args.sample_steps, "plain_s": plain_t, "masked_s": masked_t,
             "overhead_pct": 100 * (masked_med / plain_med - 1)})


def report(results, args, dry, info):
    """The Markdown tables (and the JSON) from the measurements."""
    rows, mem_rows, apply_rows, speed_rows = [], [], [], []
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
        cap = r["cap_gib"]
        capped = r["capped"]
        within = ("n/a (dry run)" if dry else "not set" if not cap else f"{cap:g} GiB: " + (
            "out of memory" if capped["oom"] else ("met" if v["peak_capped"] <= cap * 2**30 else "exceeded")))
        on_off = lambda run_: "out of memory" if run_["oom"] else (  # noqa: E731
            f"{C.mib(run_['peak_vram'])}, step {run_['profile']['steady_step_s'] or 0:.3f} s")
        mem_rows.append([family, C.mib(v["weights"]), C.mib(v["cad_grad_sums"]),
                         f"{C.mib(v['peak_single'])} (checkpointing {'on' if s.get('checkpointing') else 'off'})",
                         within + ("" if capped["oom"] else f", peak {C.mib(v['peak_capped'])}, checkpointing "
                                   f"{'on' if capped.get('checkpointing') else 'off'}"),
                         on_off(r["no_checkpointing"]), on_off(r["checkpointed"]), C.mib(r["cpu_weight_copies"])])
        a, sm = r["apply"], r["sampling"]
        apply_rows.append([family, f"{a['selected']:,}", f"{a['select_s']:.2f} s", f"{a['apply_s']:.3f} s",
                           f"{a['patch_at_load_s']:.2f} s",
                           f"{statistics.median(sm['plain_s']):.3f} s [{C.spread(sm['plain_s'])}]",
                           f"{statistics.median(sm['masked_s']):.3f} s [{C.spread(sm['masked_s'])}] "
                           f"({sm['overhead_pct']:+.1f}%)"])
        p = s["profile"]
        steady = p["steady_step_s"]
        speed_rows.append([family, f"{s['seconds']:.2f} s", f"{p['setup_and_first_step_s']:.2f} s",
                           "n/a" if steady is None else f"{steady:.3f} s", f"{p['after_last_step_s']:.2f} s",
                           f"{r['plain_step_s']:.3f} s",
                           "n/a" if steady is None else f"{steady / r['plain_step_s']:.2f}x"])
    title = "DRY RUN (CPU, reduced models; not a benchmark)" if dry else info.get("gpu", "GPU")
    if not results["families"]:      # Flux alone
        report = "\n".join([f"# CAD attribution on a GPU: {title}\n", f"Machine: {json.dumps(info)}.\n",
                            flux_report(results["flux"], dry)])
        return write_report(report, results, args, dry, info, suffix="_flux")
    report = "\n".join([
        f"# CAD attribution on a GPU: {title}\n",
        f"Machine: {json.dumps(info)}. fp16 weights, random values, ComfyUI's SD1.5 / SDXL UNet configurations, "
        f"scope ff, concept_gap, guidance 3.\n",
        C.table(["model", "T", "single calls (fwd+bwd + fwd)", "reference calls", "calls ratio", "single wall",
                 "reference wall", "wall ratio"], rows), "",
        "Where the time goes (single schedule, default settings): the step against the same UNet's plain "
        "forward+backward+forward (torch autograd on an ordinary copy, batch 1, no ComfyUI, no CAD).\n",
        C.table(["model", "single wall", "set-up + first step", "steady step (median)", "after the last step",
                 "plain fwd+bwd+fwd", "step / plain"], speed_rows), "",
        C.table(["model", "weights (VRAM)", "CAD fp32 grad sums (VRAM)", "peak VRAM, T=50 run (auto)",
                 "emulated card (cap; default settings, T=4)", "gradient_checkpointing off (T=4)",
                 "gradient_checkpointing on (T=4)", "probe weight copies (CPU RAM, only if cast)"], mem_rows), "",
        C.table(["model", "mask weights", "build mask", "Apply CAD Mask", "patch at load",
                 f"sampling {args.sample_steps} steps, {args.sample_repeats} calls: median [IQR]", "with mask"],
                apply_rows), "", *([flux_report(results["flux"], dry)] if "flux" in results else [])])
    write_report(report, results, args, dry, info)


def write_report(report, results, args, dry, info, suffix=""):
    print("\n" + report)
    os.makedirs(C.RESULTS, exist_ok=True)
    name = (args.name or ("gpu_check_dry_run" if dry else "gpu_check_" + info.get("gpu", "gpu").split(",")[0]
                          .replace(" ", "_"))) + suffix
    with open(os.path.join(C.RESULTS, name + ".md"), "w") as f:
        f.write(report)
    with open(os.path.join(C.RESULTS, name + ".json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"written to {os.path.join(C.RESULTS, name)}.md/.json")


def build_flux_dev(device, dry: bool):
    """ModelPatcher around Flux.1-dev in ComfyUI's configuration (family_cost.flux1_dev; --dry-run: one block of
    each kind), weights drawn on `device` and stored in fp8 e4m3 as the fp8 checkpoints users load, computed in
    what ComfyUI picks for fp8 there (bf16 on a recent GPU, fp32 on a CPU)."""
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from benchmarks.family_cost import flux1_dev, for_this_comfyui
    _, config = flux1_dev(dry)
    config, _ = for_this_comfyui(config)
    cfg = comfy.supported_models.Flux(config)
    weight_dtype = torch.float8_e4m3fn
    cfg.set_inference_dtype(weight_dtype, mm.unet_manual_cast(weight_dtype, device, cfg.supported_inference_dtypes))
    g = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        model = cfg.get_model({}, device=device)
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim == 1:     # norms' scales 1, biases 0
                p.fill_(1.0 if name.endswith(("scale", "norm.weight")) else 0.0)
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=torch.bfloat16)
                        .mul_(1.0 / math.sqrt(fan_in)).to(p.dtype))
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())


def flux_check(dry, cuda, log, sync) -> dict:
    """Flux.1-dev fp8, 1024x1024, T=20, ff scope, under a real 24 GiB cap; memory_budget_mb = the cap less the
    loaded weights and a headroom. Reports completion (or out of memory), time, peak, passes."""
    import torch
    import comfy.model_management as mm
    from benchmarks.attribution_cost import StepClock
    from cad_pack.cad_core import resolve_scope
    from cad_pack.cad_core.budget import MB, scope_bytes
    from cad_pack.nodes.bridge import attribute_model, patchable_weights
    from cad_pack.cad_core import AttributionRequest
    px, steps = (64, 2) if dry else (FLUX["px"], FLUX["steps"])
    cap_gib = FLUX["cap_gib"]
    device = mm.get_torch_device()
    t_build = time.perf_counter()
    mp = build_flux_dev(device, dry)
    with torch.inference_mode():
        mm.load_models_gpu([mp], force_full_load=True)
    sync()
    build_s = time.perf_counter() - t_build
    params = sum(p.numel() for p in mp.model.diffusion_model.parameters())
    weights = torch.cuda.memory_allocated() if cuda else sum(
        p.numel() * p.element_size() for p in mp.model.diffusion_model.parameters())
    shapes = dict(patchable_weights(mp))
    scope = resolve_scope(list(shapes.items()), "ff")
    state = scope_bytes([shapes[k] for k in scope])
    budget_mb = max(1, int((cap_gib * 2**30 - weights - FLUX["headroom_gib"] * 2**30) / MB))
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        def cond(seed):
            g.manual_seed(seed)
            return [[torch.randn((1, 256, 4096), generator=g), {"pooled_output": torch.randn((1, 768), generator=g),
                                                                  "guidance": 3.5}]]
        pos, neg = cond(1), cond(2)
        latent = {"samples": torch.zeros((1, 16, px // 8, px // 8))}
    log(f"flux: {params:,} params ({mp.model.get_dtype()}, compute {mp.model.manual_cast_dtype}), built and loaded "
        f"in {build_s:.1f} s; weights {C.mib(weights)}; ff scope {len(scope)} matrices, state {C.mib(state)}; "
        f"memory_budget_mb {budget_mb:,} under a {cap_gib:g} GiB cap")
    clock = StepClock()

    def progress(done, total):
        sync()
        clock(done, total)

    out = {"px": px, "steps": steps, "params": params, "weights": weights, "scope_weights": sum(
        math.prod(shapes[k]) for k in scope), "scope_state": state, "cap_gib": cap_gib, "budget_mb": budget_mb,
        "headroom_gib": FLUX["headroom_gib"], "build_s": build_s, "weight_dtype": str(mp.model.get_dtype()),
        "compute_dtype": str(mp.model.manual_cast_dtype)}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        with emulated_card(cap_gib if cuda else 0.0), torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            request = AttributionRequest(steps=steps, guidance=3.5, memory_budget_mb=budget_mb)
            a = attribute_model(mp, pos, neg, latent, request, on_progress=progress)
            sync()
            out.update(seconds=time.perf_counter() - t0, oom=False, passes=a.info.passes or 1,
                       activation_mb=a.info.activation_mb, peak_scope_mb=a.info.peak_scope_mb,
                       checkpointing=a.info.gradient_checkpointing,
                       reason=a.info.checkpointing_reason, calls=a.info.unet_calls)
    except torch.cuda.OutOfMemoryError as e:
        out.update(oom=True, error=str(e)[:300])
    out["peak"] = torch.cuda.max_memory_allocated() if cuda else None
    log("  flux: " + ("out of memory" if out["oom"] else f"{out['seconds']:.1f} s, {out['passes']} passes") + (
        "" if out["peak"] is None else f", peak {C.mib(out['peak'])}"))
    del mp
    mm.unload_all_models()
    mm.soft_empty_cache()
    return out


def flux_report(r, dry) -> str:
    size = "reduced (dry run: one block of each kind, 64x64, T=2)" if dry else f"{r['px']}x{r['px']}, T={r['steps']}"
    head = ["model", "weights (allocated)", "ff scope: weights, CAD state", "cap", "memory_budget_mb",
            "result", "wall", "passes", "one step's backward (measured)", "gradient_checkpointing", "peak allocated"]
    row = ["Flux.1-dev fp8 e4m3 (" + size + ")", C.mib(r["weights"]),
           f"{r['scope_weights'] / 1e9:.2f}B, {C.mib(r['scope_state'])}", f"{r['cap_gib']:g} GiB",
           f"{r['budget_mb']:,}", "out of memory" if r["oom"] else "completed",
           "-" if r["oom"] else f"{r['seconds']:.1f} s", "-" if r["oom"] else r["passes"],
           "-" if r["oom"] else f"{r['activation_mb']:,.0f} MiB",
           "-" if r["oom"] else ("on" if r["checkpointing"] else "off") + (f" ({r['reason']})" if r.get("reason") else ""),
           "n/a (CPU)" if r["peak"] is None else C.mib(r["peak"])]
    return "\n".join([
        "## Flux.1-dev at full size under a 24 GiB cap\n",
        f"Random weights in ComfyUI's Flux.1-dev configuration, stored as {r['weight_dtype']}, computed in "
        f"{r['compute_dtype']}; scope ff, concept_gap, guidance 3.5; memory_budget_mb = the cap less the loaded "
        f"weights and {r['headroom_gib']:g} GiB of headroom for ComfyUI's no-grad forwards. Built and loaded in "
        f"{r['build_s']:.1f} s.\n", C.table(head, [row]), ""])


@contextlib.contextmanager
def emulated_card(cap_gib: float):
    """While active (cap_gib > 0, CUDA): a real allocation cap of cap_gib (torch.cuda.set_per_process_memory_fraction,
    counting what is already allocated) and ComfyUI told the free memory such a card would have, so that its
    decisions and gradient_checkpointing=auto's are those of that card."""
    if not cap_gib:
        yield
        return
    import torch
    import comfy.model_management as mm
    real_free = mm.get_free_memory
    torch.cuda.set_per_process_memory_fraction(
        min(1.0, cap_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory))

    def card_free(dev=None, torch_free_too=False):
        free_total, free_torch = real_free(dev, True)
        left = max(0, int(cap_gib * 2**30) - torch.cuda.memory_allocated())
        return (min(free_total, left), min(free_torch, left)) if torch_free_too else min(free_total, left)
    mm.get_free_memory = card_free
    try:
        yield
    finally:
        mm.get_free_memory = real_free
        torch.cuda.set_per_process_memory_fraction(1.0)
        mm.soft_empty_cache()


def plain_step_seconds(mp, family, latent_px, pos, sync, repeats=5):
    """The hardware floor of one CAD step: the same UNet's forward+backward (gradients for its ff weights) plus
    one no-grad forward, batch 1, in plain torch on an ordinary copy (median of `repeats` after a warm-up)."""
    import copy
    import torch
    from cad_pack.cad_core import resolve_scope
    from cad_pack.nodes.bridge import patchable_weights
    scoped = {k.removeprefix("diffusion_model.") for k in resolve_scope(patchable_weights(mp), "ff")}
    device = mp.load_device
    with torch.inference_mode(False):
        unet = copy.deepcopy(mp.model.diffusion_model).to(device)
        for name, p in list(unet.named_parameters()):
            owner = unet.get_submodule(name.rsplit(".", 1)[0]) if "." in name else unet
            attr = name.rsplit(".", 1)[-1]
            setattr(owner, attr, torch.nn.Parameter(p.detach().clone(), requires_grad=name in scoped))
        dtype = next(unet.parameters()).dtype
        x = torch.randn((1, 4, latent_px, latent_px), device=device, dtype=dtype)
        t = torch.full((1,), 500.0, device=device)
        context = pos[0][0].to(device, dtype).clone()
        kw = {}
        if getattr(unet, "num_classes", None) is not None:   # SDXL: the ADM vector's width from its first layer
            kw["y"] = torch.randn((1, unet.label_emb[0][0].in_features), device=device, dtype=dtype)

        def step():
            out = unet(x, timesteps=t, context=context, **kw)
            out.float().square().mean().backward()
            with torch.no_grad():
                unet(x, timesteps=t, context=context, **kw)
            for p in unet.parameters():
                p.grad = None

        step()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
    del unet
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return statistics.median(times)


if __name__ == "__main__":
    main()
