"""Cost of CAD attribution on the full-size SD1.5 UNet architecture (random weights, fp32, CPU).

    .venv/bin/python -m benchmarks.attribution_cost [--steps 10 25 50] [--latent 8] [--max-minutes 20]
    make bench

Measures, in one run, through the node path (bridge.attribute_model on a ModelPatcher):
  1. UNet calls of the pack's `single` schedule and of the reference's restart-per-step `reference`
     schedule at each T, as cad_core counts them (attribution.info.unet_calls, batch-1 calls), and wall
     time. Call counts for every T come from cad_core's own visiting loop (run with a zero-cost stand-in
     denoiser, and checked against every real run). Wall time is measured for the runs that fit the time
     budget; the others are extrapolated from per-call costs fitted on measured runs, and marked so.
  2. Peak RSS during attribution, split into weights, CAD's scoped state (fp32 gradient sums + fp32 weight
     copies) and the rest (activations and the cast weight copies autograd keeps for backward).
  3. The cost of a memory budget (chunked passes) against one pass, and that both give the same alpha.
  4. Apply cost: building an erase mask and applying it (and ComfyUI patching the weights at load), and
     sampling speed with vs without the mask.
  5. Sizes of the saved attribution and mask files (SD1.5 measured; SDXL computed from its real shapes).
The table goes to stdout and to benchmarks/results/<name>.md.
"""
import argparse
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

from benchmarks import _common as C


def stub_counts(steps, schedule, objective="concept_gap"):
    """cad_core's UNet call counts for a schedule, from its own visiting loop with a free denoiser."""
    import torch
    from cad_pack.cad_core import attribute
    free = torch.nn.Module()
    free.w = torch.nn.Parameter(torch.ones(()))

    def denoise(x, sigma):
        return x * free.w * 0.5

    with torch.enable_grad():
        a = attribute(free, denoise, denoise, scope=["w"], sigmas=torch.linspace(10.0, 0.0, steps + 1),
                      parameterization="variance_exploding", objective=objective, guidance=3.0, schedule=schedule,
                      noise_shape=(1, 1), refuse_all_zero=False)   # concept = base: counting calls only
    calls = a.info.unet_calls
    return {"forward_backward": calls["forward_backward"], "forward_no_grad": calls["forward_no_grad"]}


class StepClock:
    """Progress callback recording when each unit of work (one guided step or one visit) finished."""

    def __init__(self):
        self.stamps = []

    def __call__(self, done, total):
        self.stamps.append(time.perf_counter())


def unit_kinds(steps, schedule):
    """The order of cad_core's progress units: a `visit` is one forward+backward of the concept plus one
    no-grad base forward; a `guided` step (reference schedule only) is two no-grad forwards."""
    if schedule == "single":
        return ["visit"] * steps
    kinds = []
    for i in range(steps):
        kinds += ["guided"] * i + ["visit"]
    return kinds


class CostModel:
    """Per-unit costs from the medians of individually timed units (robust to load bursts from other jobs),
    plus a fixed per-run overhead; predicts the wall time of a schedule at any T."""

    def __init__(self, runs):
        samples = {"visit": [], "guided": []}
        # Unit costs come from reference runs, where visits and guided steps alternate in time, so load from
        # other jobs weighs on both alike; single runs only count when no reference run was measured.
        timed_runs = [r for r in runs if r["schedule"] == "reference"] or list(runs)
        for r in timed_runs:
            kinds = unit_kinds(r["steps"], r["schedule"])
            stamps = r["stamps"]
            assert len(stamps) == len(kinds), (len(stamps), len(kinds))
            for k in range(1, len(kinds)):  # unit 0 also carries the run's set-up
                samples[kinds[k]].append(stamps[k] - stamps[k - 1])
        self.visit = statistics.median(samples["visit"])
        self.guided = statistics.median(samples["guided"]) if samples["guided"] else float("nan")
        self.samples = {k: len(v) for k, v in samples.items()}
        self.fastest = {k: min(v) if v else float("nan") for k, v in samples.items()}
        self.fixed = max(0.0, statistics.median(r["seconds"] - self.units(r["steps"], r["schedule"]) for r in runs))

    def units(self, steps, schedule):
        guided = steps * (steps - 1) / 2 if schedule == "reference" else 0
        return steps * self.visit + guided * self.guided

    def predict(self, steps, schedule):
        return self.fixed + self.units(steps, schedule)

    @property
    def no_grad_forward(self):
        return self.guided / 2

    @property
    def forward_backward(self):
        return self.visit - self.no_grad_forward

    def describe(self):
        return (f"visit (fwd+bwd + base fwd) {self.visit:.2f} s [median of {self.samples['visit']}], guided step "
                f"(2 no-grad fwd) {self.guided:.2f} s [median of {self.samples['guided']}], fixed {self.fixed:.1f} s "
                f"per run; i.e. forward+backward {self.forward_backward:.2f} s, no-grad forward {self.no_grad_forward:.2f} s "
                f"(fastest units: visit {self.fastest['visit']:.2f} s, guided step {self.fastest['guided']:.2f} s)")


def attribute(mp, pos, neg, latent_px, steps, schedule, clock=None, memory_budget_mb=0):
    import torch
    from cad_pack.cad_core import AttributionRequest
    from cad_pack.nodes.bridge import attribute_model
    request = AttributionRequest(steps=steps, schedule=schedule, memory_budget_mb=memory_budget_mb)
    with torch.inference_mode(), C.PeakRSS() as mem:
        attribution, seconds = C.timed(attribute_model, mp, pos, neg, C.empty_latent(latent_px), request,
                                       on_progress=clock)
    return attribution, seconds, mem


def sample_seconds(mp, pos, neg, latent_px, steps):
    import torch
    import comfy.sample
    with torch.inference_mode():
        latent = C.empty_latent(latent_px)["samples"]
        noise = comfy.sample.prepare_noise(latent, 1)
        _, seconds = C.timed(comfy.sample.sample, mp, noise, steps, 7.5, "euler", "normal", pos, neg, latent,
                             seed=1, disable_pbar=True)
    return seconds


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--latent", type=int, default=8, help="latent side (8 = 64 px)")
    ap.add_argument("--max-minutes", type=float, default=14.0,
                    help="budget for the timed attribution runs (the whole script takes ~6 min more)")
    ap.add_argument("--calibration-steps", type=int, default=5,
                    help="T of the reference run whose interleaved visits and guided steps give the unit costs")
    ap.add_argument("--memory-steps", type=int, default=2, help="T of the single run used for memory and masks")
    ap.add_argument("--sample-steps", type=int, default=1)
    ap.add_argument("--sample-repeats", type=int, default=10, help="rounds of 2 timed calls each (10: 20 per model)")
    ap.add_argument("--chunk-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--name", default="attribution_cost_cpu")
    ap.add_argument("--tiny", action="store_true", help="dry run on a reduced SD1.5 (checks the script, not a benchmark)")
    return ap.parse_args()


class Log:
    """print() prefixed with the seconds since the run started."""

    def __init__(self):
        self.started = time.perf_counter()

    def __call__(self, *a):
        print(f"[{time.perf_counter() - self.started:7.1f}s]", *a, flush=True)

    def minutes(self):
        return (time.perf_counter() - self.started) / 60


def all_counts(args):
    """1. cad_core's exact call counts for every T the run uses, both schedules."""
    return {(t, s): stub_counts(t, s) for t in sorted(set(args.steps + [args.calibration_steps, args.memory_steps]))
            for s in ("single", "reference")}


@dataclass
class Model:
    """The SD1.5 UNet under test and what the report says of it."""
    mp: object
    params: int
    scope: list
    scoped: int
    rss0: int
    rss_model: int

    @property
    def cad_state(self):
        """Bytes of CAD's scoped state in this run: the fp32 gradient sums (an fp32 model computes with the weights
        it holds, so the probes keep references to them, not copies)."""
        return self.scoped * 4

    @property
    def budget_state(self):
        """What memory_budget_mb counts for the scope (8 B/weight: room for weight copies where a model casts)."""
        from cad_pack.cad_core.budget import BYTES_PER_SCOPED_WEIGHT
        return self.scoped * BYTES_PER_SCOPED_WEIGHT


def build_model(args, log):
    """2. The model, its parameter count and its ff scope, with the process RSS before and after."""
    import torch
    from cad_pack.cad_core import resolve_scope
    from cad_pack.nodes.bridge import patchable_weights
    rss0 = C.rss()
    mp, build_s = C.timed(C.build_unet, "sd15", torch.float32, tiny=args.tiny)
    rss_model = C.rss()
    params = sum(p.numel() for p in mp.model.diffusion_model.parameters())
    scope = resolve_scope(patchable_weights(mp), "ff")
    shapes = dict(patchable_weights(mp))
    scoped = sum(math.prod(shapes[k]) for k in scope)
    log(f"SD1.5 UNet built in {build_s:.1f}s: {params:,} params, ff scope {len(scope)} matrices, {scoped:,} weights")
    return Model(mp, params, scope, scoped, rss0, rss_model)


def plain_forward_seconds(mp, pos, latent_px, log):
    """A plain forward (what one sampling call of one prompt costs), timed after a warm-up call."""
    import torch
    import comfy.model_management as mm
    with torch.inference_mode():
        mm.load_models_gpu([mp])
        x = torch.randn((1, 4, latent_px, latent_px))
        mp.model.apply_model(x, torch.tensor([5.0]), c_crossattn=pos[0][0])
        _, plain_fwd = C.timed(mp.model.apply_model, x, torch.tensor([5.0]), c_crossattn=pos[0][0])
    log(f"plain forward {plain_fwd:.2f}s")
    return plain_fwd


class ScheduleRuns:
    """The timed attribution runs, by (T, schedule), each checked against cad_core's call counts."""

    def __init__(self, mp, pos, neg, latent_px, counts, log):
        self.mp, self.pos, self.neg, self.latent_px, self.counts, self.log = mp, pos, neg, latent_px, counts, log
        self.runs = {}

    def measure(self, t, schedule):
        clock = StepClock()
        a, seconds, mem = attribute(self.mp, self.pos, self.neg, self.latent_px, t, schedule, clock=clock)
        calls = {k: a.info.unet_calls[k] for k in ("forward_backward", "forward_no_grad")}
        assert calls == self.counts[(t, schedule)], (calls, self.counts[(t, schedule)])
        self.runs[(t, schedule)] = {"seconds": seconds, "calls": calls, "peak": mem.peak, "start": mem.start,
                                    "steps": t, "schedule": schedule, "stamps": clock.stamps}
        self.log(f"{schedule:9s} T={t:3d}: {seconds:8.1f}s  calls {calls}  peak RSS {C.mib(mem.peak)}")
        return a

    def cost_model(self):
        cost = CostModel(list(self.runs.values()))
        self.log("unit costs:", cost.describe())
        return cost


def measure_schedules(sched, args, deadline):
    """3. Calibration runs (always measured) and any schedule runs that fit the budget; returns the
    attribution of the memory run (reused for masks and files) and the fitted cost model."""
    calib = sched.measure(args.memory_steps, "single")            # also warms up allocator and caches
    sched.measure(args.calibration_steps, "reference")
    assert all(p.grad is None and not p.requires_grad for p in sched.mp.model.parameters())  # no buffers outside scope
    cost = sched.cost_model()
    for t in sorted(args.steps):
        for schedule in ("single", "reference"):
            if (t, schedule) in sched.runs:
                continue
            if time.perf_counter() + cost.predict(t, schedule) * 1.15 < deadline:
                sched.measure(t, schedule)
                cost = sched.cost_model()
            else:
                sched.log(f"{schedule:9s} T={t:3d}: predicted {cost.predict(t, schedule):.0f}s does not fit the budget; "
                          f"extrapolated")
    return calib, cost


def chunking_rows(mp, pos, neg, args, cad_state, log):
    """5. Chunking cost: the same attribution in one pass and under budgets that force 2 and 4 passes."""
    from cad_pack.cad_core.budget import MB
    whole, whole_s, whole_mem = attribute(mp, pos, neg, args.latent, args.chunk_steps, "single")
    rows = [["one pass (no budget)", f"{C.mib(cad_state)}", whole.info.unet_calls["forward_backward"],
             f"{whole_s:.1f} s", f"{C.mib(whole_mem.peak)}", "-"]]
    # what the budget reserves for one step's backward (checkpointed: auto's choice on a CPU), plus a share of the
    # scope's per-weight state: about 2 and 4 passes
    step_mb = C.step_backward_bytes(mp, pos, neg, args.latent, checkpointed=True) / MB
    for fraction in (0.55, 0.3):
        budget_mb = round(step_mb + cad_state / MB * fraction, 1)
        chunked, chunk_s, chunk_mem = attribute(mp, pos, neg, args.latent, args.chunk_steps, "single",
                                                memory_budget_mb=budget_mb)
        diff = max(float((chunked.scores[k] - s).abs().max() / s.abs().max().clamp_min(1e-30))
                   for k, s in whole.scores.items())
        passes = chunked.info.passes or 1
        log(f"chunked ({passes} passes, budget {budget_mb} MB) {chunk_s:.1f}s vs {whole_s:.1f}s; max rel diff {diff:.2e}")
        rows.append([f"memory_budget_mb={budget_mb:g}: {passes} passes", f"{chunked.info.peak_scope_mb:,.0f} MiB",
                     chunked.info.unet_calls["forward_backward"], f"{chunk_s:.1f} s ({chunk_s / whole_s:.2f}x)",
                     f"{C.mib(chunk_mem.peak)}", f"{diff:.1e}"])
        del chunked
    return rows


def apply_cost(mp, calib, ratio, log):
    """6. Building an erase mask, applying it, and ComfyUI patching the weights at the next load."""
    import torch
    import comfy.model_management as mm
    from cad_pack.cad_core import select_components
    from cad_pack.nodes.bridge import apply_mask
    mask, select_s = C.timed(select_components, calib, "erase", ratio, "per_row")
    patched, apply_s = C.timed(apply_mask, mp, mask, 1.0)
    with torch.inference_mode():
        _, patch_s = C.timed(mm.load_models_gpu, [patched], force_full_load=True)
    log(f"mask: {mask.count:,} weights; select {select_s:.2f}s, apply {apply_s:.3f}s, patch at load {patch_s:.2f}s")
    return {"mask": mask, "patched": patched, "select_s": select_s, "apply_s": apply_s, "patch_s": patch_s}


def file_sizes(calib, mask, scoped):
    """6. Sizes of the saved attribution and mask files, and their headers (size minus 4 bytes per value). The mask
    as a LoRA is measured by apply_cost.py."""
    from cad_pack.cad_core import save_attribution, save_mask
    with tempfile.TemporaryDirectory() as tmp:
        a_path = save_attribution(calib, os.path.join(tmp, "a.safetensors"))
        m_path = save_mask(mask, os.path.join(tmp, "m.safetensors"))
        a_size, m_size = os.path.getsize(a_path), os.path.getsize(m_path)
    return {"attribution": a_size, "mask": m_size, "attribution_header": a_size - 4 * scoped,
            "mask_header": m_size - 4 * mask.count}


def sampling_times(mp, patched, pos, neg, args, log):
    """7. Sampling with vs without the mask, steady state: a model is loaded (and patched) by its first call,
    then timed on repeated calls; the two are interleaved so load from other jobs hits both alike."""
    plain_t, masked_t = [], []
    for _ in range(args.sample_repeats):
        sample_seconds(mp, pos, neg, args.latent, args.sample_steps)          # (re)load: unpatch
        plain_t += [sample_seconds(mp, pos, neg, args.latent, args.sample_steps) for _ in range(2)]
        sample_seconds(patched, pos, neg, args.latent, args.sample_steps)     # (re)load: patch
        masked_t += [sample_seconds(patched, pos, neg, args.latent, args.sample_steps) for _ in range(2)]
    log(f"sampling {args.sample_steps} steps: plain {plain_t}, masked {masked_t}")
    return plain_t, masked_t


def family_sizes(ratio, files, n_scope, log):
    """8. SDXL sizes from the real shapes (no allocation); SD1.5 computed the same way as a check."""
    from cad_pack.cad_core import resolve_scope
    sizes = {}
    for family in ("sd15", "sdxl"):
        named = C.meta_unet_shapes(family)
        ff = resolve_scope(named, "ff")
        ff_shapes = [dict(named)[k] for k in ff]
        n_ff = sum(math.prod(s) for s in ff_shapes)
        n_all = sum(math.prod(s) for _, s in named)
        n_sel = C.count_selected_per_row(list(zip(ff, ff_shapes)), ratio)
        sizes[family] = {"params": n_all, "ff": n_ff, "matrices": len(ff),
                         "attribution": 4 * n_ff + files["attribution_header"] * len(ff) / n_scope,
                         "mask_max": 4 * n_sel + files["mask_header"], "selected_max": n_sel}
    log("sizes", sizes)
    return sizes


# -------------------------------------------------------------------------------------------- report
def schedule_table(args, counts, runs, cost):
    rows = []
    for t in sorted(args.steps):
        cells = []
        for schedule in ("single", "reference"):
            c = counts[(t, schedule)]
            if (t, schedule) in runs:
                wall = f"{runs[(t, schedule)]['seconds']:.0f} s (measured)"
                value = runs[(t, schedule)]["seconds"]
            else:
                value = cost.predict(t, schedule)
                wall = f"~{value:.0f} s (extrapolated)"
            cells.append((c, wall, value))
        (cs, ws, vs), (cr, wr, vr) = cells
        calls_s = cs["forward_backward"] + cs["forward_no_grad"]
        calls_r = cr["forward_backward"] + cr["forward_no_grad"]
        passes_s = 2 * cs["forward_backward"] + cs["forward_no_grad"]
        passes_r = 2 * cr["forward_backward"] + cr["forward_no_grad"]
        rows.append([t, f"{cs['forward_backward']} + {cs['forward_no_grad']}", f"{cr['forward_backward']} + {cr['forward_no_grad']}",
                     f"{calls_r / calls_s:.1f}x", f"{passes_r / passes_s:.1f}x", ws, wr, f"{vr / vs:.1f}x"])
    return C.table(
        ["T", "single: fwd+bwd + fwd calls", "reference: fwd+bwd + fwd calls", "calls ratio",
         "fwd+bwd passes ratio", "single wall", "reference wall", "wall ratio"], rows)


def memory_table(args, model, runs):
    """4. Memory breakdown (single schedule, the memory run)."""
    weights_bytes = model.params * 4
    single_peak = runs[(args.memory_steps, "single")]["peak"]
    rest = single_peak - model.rss_model - model.cad_state
    return C.table(["", "size"], [
        ["process before the model", C.mib(model.rss0)],
        [f"model weights (fp32, {model.params / 1e6:.1f}M params; RSS growth at build)",
         f"{C.mib(weights_bytes)} ({C.mib(model.rss_model - model.rss0)})"],
        ["CAD scoped state: fp32 gradient sums (ff scope, 4 B/weight; no weight copies: the probes keep references "
         "to the fp32 weights the model computes with)", C.mib(model.cad_state)],
        [f"peak RSS, single schedule T={args.memory_steps}", C.mib(single_peak)],
        ["rest: activations + cast weight copies autograd holds for backward", C.mib(rest)],
        ["gradient buffers outside the scope", "none (no parameter has .grad or requires_grad after the run)"],
    ])


def apply_table(args, ratio, applied, plain_t, masked_t):
    mask = applied["mask"]
    plain_med, masked_med = statistics.median(plain_t), statistics.median(masked_t)
    plain_min, masked_min = min(plain_t), min(masked_t)
    return C.table(["step", "time"], [
        [f"build erase mask (per_row, ratio {ratio}): {mask.count:,} weights", f"{applied['select_s']:.2f} s"],
        ["Apply CAD Mask (clone + add_patches, fingerprint check)", f"{applied['apply_s']:.3f} s"],
        ["ComfyUI patching the weights at the next load (once per model switch)", f"{applied['patch_s']:.2f} s"],
        [f"sampling {args.sample_steps} step(s) (cfg 7.5, euler), {len(plain_t)} timed calls each, median "
         f"[interquartile range] / min: without mask", f"{plain_med:.3f} s [{C.spread(plain_t)}] / {plain_min:.3f} s"],
        ["... with mask", f"{masked_med:.3f} s [{C.spread(masked_t)}] ({100 * (masked_med / plain_med - 1):+.1f}%) / "
                          f"{masked_min:.3f} s ({100 * (masked_min / plain_min - 1):+.1f}%)"],
    ])


def files_table(params, ratio, mask, files, sizes):
    ckpt16 = params * 2
    return C.table(["file (safetensors + JSON metadata)", "SD1.5", "SDXL"], [
        ["UNet checkpoint, fp16 / fp32 (for comparison)", f"{C.mib(ckpt16)} / {C.mib(2 * ckpt16)}",
         f"{C.mib(sizes['sdxl']['params'] * 2)} / {C.mib(sizes['sdxl']['params'] * 4)}"],
        ["attribution, ff scope (fp32 score per weight)",
         f"{C.mib(files['attribution'])} measured ({sizes['sd15']['ff']:,} scores)",
         f"{C.mib(sizes['sdxl']['attribution'])} computed ({sizes['sdxl']['ff']:,} scores)"],
        [f"erase mask, per_row ratio {ratio} (int32 flat indices)",
         f"{files['mask'] / 1024:,.0f} KiB measured ({mask.count:,} indices)",
         f"<= {sizes['sdxl']['mask_max'] / 1024:,.0f} KiB computed (<= {sizes['sdxl']['selected_max']:,} indices)"],
    ])


def chunk_table(args, chunk_rows):
    return C.table([f"single, T={args.chunk_steps}", "CAD state per pass", "fwd+bwd calls", "wall", "peak RSS",
                    "alpha: max rel. diff to one pass"], chunk_rows)


def header(args, info, model, total_minutes):
    return (f"# CAD attribution cost: {'REDUCED (dry run, --tiny)' if args.tiny else 'full-size'} SD1.5 UNet, CPU\n\n"
            f"Machine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
            f"{info['ram_gib']} GiB RAM; Python {info['python']}, torch {info['torch']}, ComfyUI {info['comfyui']}. "
            f"Load average at start {info['load_average']} (the machine was shared with other jobs, so wall "
            f"times are noisy). Model: ComfyUI's SD1.5 UNet configuration (comfy.supported_models.SD15), random "
            f"weights, fp32, latent {args.latent}x{args.latent} ({args.latent * 8} px), scope ff "
            f"({len(model.scope)} matrices, {model.scoped:,} weights), objective concept_gap, guidance 3. Run took "
            f"{total_minutes:.1f} min.\n")


def schedule_notes(cost, plain_fwd):
    return (f"Calls are batch-1 UNet calls as cad_core counts them (`attribution.info.unet_calls`): "
            f"`single` does T forward+backward passes of the concept branch and T no-grad base passes; "
            f"`reference` restarts a trajectory for every visited step (T(T-1)/2 guided steps of 2 calls each, "
            f"plus the T visits). The counts for every T are cad_core's own (its visiting loop run with a free "
            f"stand-in denoiser) and equal the counts of every measured run. 'fwd+bwd passes ratio' counts a "
            f"backward as one more pass. Extrapolated wall times use unit costs from the measured runs "
            f"(medians of the individually timed steps, robust to load bursts): {cost.describe()}. A plain ComfyUI "
            f"forward of this model (no probes) took {plain_fwd:.1f} s.\n")


def write_report(report, name):
    print("\n" + report)
    os.makedirs(C.RESULTS, exist_ok=True)
    path = os.path.join(C.RESULTS, f"{name}.md")
    with open(path, "w") as f:
        f.write(report)
    print(f"written to {path}")


def main():
    args = parse_args()
    C.setup(cpu=True)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)

    log = Log()
    deadline = log.started + args.max_minutes * 60
    info = C.machine()
    log("machine", info)

    counts = all_counts(args)
    model = build_model(args, log)
    pos, neg = C.conditioning("sd15", 1, args.latent * 8), C.conditioning("sd15", 2, args.latent * 8)
    plain_fwd = plain_forward_seconds(model.mp, pos, args.latent, log)
    sched = ScheduleRuns(model.mp, pos, neg, args.latent, counts, log)
    calib, cost = measure_schedules(sched, args, deadline)
    chunk_rows = chunking_rows(model.mp, pos, neg, args, model.budget_state, log)
    ratio = 0.05 if args.tiny else 0.001   # per_row at 0.001 selects nothing in rows narrower than 1000
    applied = apply_cost(model.mp, calib, ratio, log)
    files = file_sizes(calib, applied["mask"], model.scoped)
    plain_t, masked_t = sampling_times(model.mp, applied["patched"], pos, neg, args, log)
    sizes = family_sizes(ratio, files, len(model.scope), log)

    report = "\n".join([header(args, info, model, log.minutes()),
                        "## Single vs reference schedule\n", schedule_table(args, counts, sched.runs, cost), "",
                        schedule_notes(cost, plain_fwd),
                        "## Peak memory (RSS)\n", memory_table(args, model, sched.runs), "",
                        "## Memory budget (chunked passes)\n", chunk_table(args, chunk_rows), "",
                        "## Apply cost and sampling overhead\n", apply_table(args, ratio, applied, plain_t, masked_t), "",
                        "## File sizes\n", files_table(model.params, ratio, applied["mask"], files, sizes), "",
                        "SDXL sizes are computed from its real layer shapes (built on the meta device) with the "
                        "per-file overhead measured on SD1.5; the mask size is an upper bound (every picked score "
                        "positive).\n"])
    write_report(report, args.name)


if __name__ == "__main__":
    main()
