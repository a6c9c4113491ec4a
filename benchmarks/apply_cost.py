"""What an edit costs after attribution: sampling with a CAD mask against plain sampling, and the mask's size as a
LoRA file. Full-size SD1.5 UNet (random weights), CPU.

    .venv/bin/python -m benchmarks.apply_cost [--repeats 20] [--latent 8] [--ratio 0.05]

Sampling: the plain model and the masked clone (Apply CAD Mask) share their weights, so switching between them
makes ComfyUI unpatch or patch the weights at the next call (once per switch, as in a workflow that samples one
model after the other). Each round therefore calls each model twice, untimed (the switch) then timed (steady
state); `repeats` rounds, the order of the models rotating from round to round. A third arm, a plain clone of the
unedited model, is timed the same way: its ratio to the plain model is the noise floor of the measurement (this
2-core machine is shared, and its speed drifts by tens of percent within minutes). Reported: median, interquartile range, and the median of the per-pair ratios.
LoRA: Save CAD Mask as LoRA's file for the same mask, for the fp32 model and for the same model stored in fp16.
Writes benchmarks/results/<name>.md.
"""
import argparse
import os
import statistics
import tempfile
import time

from benchmarks import _common as C


def quartiles(times):
    q1, median, q3 = statistics.quantiles(times, n=4)
    return q1, statistics.median(times), q3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--latent", type=int, default=8, help="latent side (8 = 64 px)")
    ap.add_argument("--sample-steps", type=int, default=1)
    ap.add_argument("--ratio", type=float, default=0.05, help="erase mask ratio, per_row")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="reduced UNet (a dry run of the script)")
    ap.add_argument("--name", default="apply_cost_cpu")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="treat denormal floats as 0 (torch.set_flush_denormal): tells a slowdown from tiny values in "
                    "the activations apart from one the mask's patching causes")
    args = ap.parse_args()
    C.setup(cpu=True)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        raise SystemExit("--flush-denormal: this CPU does not support flushing denormals")
    import comfy.model_management as mm
    import comfy.sample
    from cad_pack.cad_core import select_components
    from cad_pack.cad_core.export import save_lora
    from cad_pack.nodes.bridge import apply_mask, attribute_model
    from cad_pack.cad_core import AttributionRequest
    from cad_pack.nodes.bridge.export import lora_from_mask

    started = time.time()
    px = args.latent * 8
    pos, neg = C.conditioning("sd15", 1, px), C.conditioning("sd15", 2, px)
    mp = C.build_unet("sd15", torch.float32, tiny=args.tiny)
    with torch.inference_mode():
        attribution = attribute_model(mp, pos, neg, C.empty_latent(args.latent),
                                      AttributionRequest(steps=2))
    mask, select_s = C.timed(select_components, attribution, "erase", args.ratio, "per_row")
    patched, apply_s = C.timed(apply_mask, mp, mask, 1.0)

    def sample(model):
        with torch.inference_mode():
            latent = C.empty_latent(args.latent)["samples"]
            noise = comfy.sample.prepare_noise(latent, 1)
            start = time.perf_counter()
            comfy.sample.sample(model, noise, args.sample_steps, 7.5, "euler", "normal", pos, neg, latent, seed=1,
                                disable_pbar=True)
            return time.perf_counter() - start

    load_s = {"plain": sample(mp), "masked": sample(patched)}   # first calls load (and patch) each model
    arms = [("plain", mp), ("masked", patched), ("plain again", mp.clone())]
    times, switch = {name: [] for name, _ in arms}, []
    for round_ in range(args.repeats):
        for name, model in arms[round_ % 3:] + arms[:round_ % 3]:
            first = sample(model)                  # the switch: unpatch / patch the shared weights
            if name == "masked":
                switch.append(first)
            times[name].append(sample(model))
    plain, masked, again = times["plain"], times["masked"], times["plain again"]
    ratios = [m / p for p, m in zip(plain, masked)]
    floor = [a / p for p, a in zip(plain, again)]
    mm.unload_all_models()

    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (torch.float32, torch.float16):
            model = mp if dtype == torch.float32 else C.build_unet("sd15", torch.float16, tiny=args.tiny)
            tensors = lora_from_mask(model, mask)
            path = save_lora(tensors, os.path.join(tmp, f"{dtype}.safetensors"), mask)
            sizes[str(dtype).removeprefix("torch.")] = (os.path.getsize(path), len(tensors))
            del tensors, model

    m = C.machine()
    p_q1, p_med, p_q3 = quartiles(plain)
    m_q1, m_med, m_q3 = quartiles(masked)
    r_q1, r_med, r_q3 = quartiles(ratios)
    f_q1, f_med, f_q3 = quartiles(floor)
    size = "reduced (--tiny)" if args.tiny else "full-size"
    report = "\n".join([
        f"# Applying a CAD mask: {size} SD1.5 UNet, CPU", "",
        f"Written by `benchmarks/apply_cost.py` on {time.strftime('%Y-%m-%d')}; {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']} ({m['torch_threads']} threads), ComfyUI {m['comfyui']}, load average {m['load_average']}; "
        f"run time {(time.time() - started) / 60:.1f} min. Erase mask: per_row ratio {args.ratio} of an ff-scope "
        f"attribution (concept_gap, T=2): {mask.count:,} weights in {sum(1 for i in mask.indices.values() if i.numel())} "
        f"matrices." + (" Denormal floats flushed to 0 (--flush-denormal)." if args.flush_denormal else "")
        + "".join(f" {k}={v}." for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")), "",
        "## Sampling with the mask", "",
        C.table(["", "time"], [
            ["build the erase mask (CAD Erase Mask)", f"{select_s:.2f} s"],
            ["Apply CAD Mask (clone + add_patches, fingerprint check)", f"{apply_s:.3f} s"],
            ["first sampling call, plain / masked (loads; masked also patches the weights)",
             f"{load_s['plain']:.2f} s / {load_s['masked']:.2f} s"],
            ["a masked call right after a plain one (patches the weights again), median",
             f"{statistics.median(switch):.3f} s"],
            [f"sampling {args.sample_steps} steps at {px} px (cfg 7.5, euler), {args.repeats} timed calls each, "
             f"steady state (after the switch call): plain, median [interquartile range]", f"{p_med:.3f} s [{p_q1:.3f}-{p_q3:.3f} s]"],
            ["... masked", f"{m_med:.3f} s [{m_q1:.3f}-{m_q3:.3f} s]"],
            ["masked / plain, per round: median [interquartile range]",
             f"{r_med:.3f} [{r_q1:.3f}-{r_q3:.3f}] ({100 * (r_med - 1):+.1f}%)"],
            ["noise floor: a plain clone / plain, per round: median [interquartile range]",
             "{:.3f} [{:.3f}-{:.3f}] ({:+.1f}%)".format(f_med, f_q1, f_q3, 100 * (f_med - 1))],
        ]), "",
        "## The mask as a LoRA (Save CAD Mask as LoRA)", "",
        C.table(["model weights", "LoRA file", "matrices (full diffs)"],
                [[dtype, C.mib(b), n] for dtype, (b, n) in sizes.items()]), "",
        f"For comparison: the fp16 UNet is {C.mib(sum(p.numel() for p in mp.model.diffusion_model.parameters()) * 2)}.",
        ""])
    os.makedirs(C.RESULTS, exist_ok=True)
    with open(os.path.join(C.RESULTS, f"{args.name}.md"), "w") as f:
        f.write(report)
    print(report)


if __name__ == "__main__":
    main()
