"""GPU compatibility check: CAD Attribute and Apply CAD Mask on every ComfyUI leg and memory mode a GPU user runs.

    make gpu-compat                                  # on a CUDA machine: both legs, every mode (a few minutes)
    python -m benchmarks.gpu_compat --cpu            # the same checks on the CPU (checks the script; no table)
    python -m benchmarks.gpu_compat --legs 0.33.0=python3:/path/to/ComfyUI-0.33.0   # another Python/ComfyUI

One child process per (ComfyUI version, mode), because ComfyUI reads its flags once, at import. A child imports
ComfyUI's own main.py with the mode's flags (so Dynamic VRAM is set up exactly as the server sets it up), then
for each model:
  - sd15, sdxl, flux: reduced models built from ComfyUI's classes (scripts/family_models.py), handed out as
    ComfyUI's loaders hand them out (CoreModelPatcher: ModelPatcherDynamic under Dynamic VRAM) with a
    loader that can re-run (cached_patcher_init), as core loaders set it;
  - sd15-file: a checkpoint file (scripts/make_test_checkpoint.py) through comfy.sd.load_checkpoint_guess_config;
  - sd15-custom-loader: like sd15, but without cached_patcher_init (a custom loader), so under Dynamic VRAM
    CAD differentiates the dynamic model itself with its safeguards;
checks that
  1. CAD Attribute's alpha equals plain autograd (rtol 1e-4, atol 1e-4 x max|alpha|: the CPU tests' tolerance;
     TF32 is switched off so fp32 means fp32);
  2. Apply CAD Mask zeroes exactly the selected entries of the weight the forward pass really uses (read by a
     weight wrapper during a forward, so it works when Dynamic VRAM never materialises module.weight), and
     after the masked model ran, the original model's forward uses its weight bit for bit;
  3. the original MODEL samples bit-identically after CAD Attribute and the masked model ran.
Modes: 0.33.0: dynamic (default flags), disable-dynamic (--disable-dynamic-vram), lowvram (--lowvram
--disable-dynamic-vram with ComfyUI's free-memory reading capped at half the model, so the model is only
partly loaded); 0.3.75 (no Dynamic VRAM): default and lowvram. --cpu runs mode cpu (--cpu) on each leg.
Writes benchmarks/results/gpu_compat_<GPU>.md and .json (GPU runs only).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
LEGS = {"0.33.0": (".venv-comfyui-0.33/bin/python", ".comfyui/ComfyUI-0.33.0"),
        "0.3.75": (".venv/bin/python", ".comfyui/ComfyUI")}
MODES = {  # mode -> ComfyUI flags; which legs have it
    "dynamic": ([], ("0.33.0",)),
    "disable-dynamic": (["--disable-dynamic-vram"], ("0.33.0",)),
    "default": ([], ("0.3.75",)),
    "lowvram": (["--lowvram"], ("0.33.0", "0.3.75")),
    "cpu": (["--cpu"], ("0.33.0", "0.3.75")),
}
FAMILIES = ("sd15", "sdxl", "flux", "sd15-file", "sd15-custom-loader")
STEPS, SEED, GUIDANCE = 2, 5, 3.0


# ------------------------------------------------------------------------------------------------ driver
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="mode cpu on every leg (checks the script; writes no table)")
    ap.add_argument("--legs", nargs="+", default=None,
                    help="VERSION or VERSION=PYTHON:COMFYUI_PATH (default: the managed legs that are set up)")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--results-dir", default=None, help="where the table goes (GPU default: benchmarks/results)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.families, args.out)

    rows, runs = [], []
    for version, python, comfyui in legs(args.legs):
        for mode in (["cpu"] if args.cpu else [m for m, (_, vs) in MODES.items() if version in vs and m != "cpu"]):
            flags = MODES[mode][0] + (["--disable-dynamic-vram"] if mode == "lowvram" and version == "0.33.0" else [])
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "rows.json")
                started = time.time()
                proc = subprocess.run([python, "-m", "benchmarks.gpu_compat", "--child", mode, "--out", out,
                                       "--families", *args.families],
                                      env={**os.environ, "COMFYUI_PATH": comfyui, "CAD_GPU_COMPAT_FLAGS": json.dumps(flags)},
                                      capture_output=True, text=True, cwd=REPO)
                seconds = time.time() - started
                got = json.load(open(out)) if os.path.exists(out) else {"rows": [], "machine": {}}
            runs.append({"comfyui": version, "mode": mode, "flags": flags, "returncode": proc.returncode,
                         "seconds": round(seconds, 1), "machine": got["machine"],
                         "log_tail": (proc.stdout + proc.stderr)[-3000:] if proc.returncode else ""})
            rows += [{"comfyui": version, "mode": mode, "flags": " ".join(flags) or "(none)", **r} for r in got["rows"]]
            status = "ok" if proc.returncode == 0 and got["rows"] and all(r["pass"] for r in got["rows"]) else "FAILED"
            print(f"[gpu-compat] ComfyUI {version} {mode}: {status} ({seconds:.0f} s)", flush=True)
            if proc.returncode:
                print(runs[-1]["log_tail"], file=sys.stderr)
    results_dir = args.results_dir or (None if args.cpu else RESULTS)
    if results_dir:
        write_table(results_dir, rows, runs)
    ok = bool(rows) and all(r["pass"] for r in rows) and all(r["returncode"] == 0 for r in runs)
    print(f"[gpu-compat] {'all checks passed' if ok else 'FAILURES'}: {sum(r['pass'] for r in rows)}/{len(rows)} rows")
    return 0 if ok else 1


def legs(specs):
    out = []
    for spec in specs or [v for v, (py, cf) in LEGS.items()
                          if os.path.exists(os.path.join(REPO, py)) and os.path.isfile(os.path.join(REPO, cf, "main.py"))]:
        version, _, rest = spec.partition("=")
        python, comfyui = rest.split(":", 1) if rest else (os.path.join(REPO, LEGS[version][0]),
                                                           os.path.join(REPO, LEGS[version][1]))
        out.append((version, python, os.path.abspath(comfyui)))
    if not out:
        raise SystemExit("no ComfyUI leg is set up: run `make setup` and/or `make setup-0.33`, or pass --legs")
    return out


def write_table(results_dir, rows, runs):
    os.makedirs(results_dir, exist_ok=True)
    machine = next((r["machine"] for r in runs if r["machine"]), {})
    name = machine.get("gpu", "cpu").replace(" ", "_")
    stem = os.path.join(results_dir, f"gpu_compat_{name}")
    with open(stem + ".json", "w") as f:
        json.dump({"machine": machine, "runs": runs, "rows": rows}, f, indent=1)
    lines = [f"# GPU compatibility check ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine.get('gpu', '?')}, torch {machine.get('torch', '?')}, CUDA {machine.get('cuda', '?')}, "
             f"Python {machine.get('python', '?')}, {machine.get('cpu', '?')}. Written by benchmarks/gpu_compat.py.",
             "", "| ComfyUI | mode | flags | model | patcher | differentiated | partly loaded | alpha max rel. error "
             "| alpha = autograd | mask zeroes | unpatch bit-exact | original bit-identical | pass |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['comfyui']} | {r['mode']} | {r['flags']} | {r['model']} | {r['patcher']} | "
                     f"{r['differentiated']} | {r['partly_loaded']} | {r['alpha_max_rel_error']:.2e} | "
                     f"{r['alpha_ok']} | {r['mask_zeroes']} | {r['unpatch_bit_exact']} | {r['original_bit_identical']} "
                     f"| {'yes' if r['pass'] else '**NO**'} |")
    lines += ["", "| ComfyUI | mode | seconds | exit code |", "|---|---|---|---|"]
    lines += [f"| {r['comfyui']} | {r['mode']} | {r['seconds']} | {r['returncode']} |" for r in runs]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"[gpu-compat] wrote {os.path.relpath(stem, REPO)}.md/.json")


# ------------------------------------------------------------------------------------------------ child
def child(mode, families, out):
    flags = json.loads(os.environ.get("CAD_GPU_COMPAT_FLAGS", "[]"))
    from scripts.pack_bootstrap import import_pack, put_comfyui_on_path
    put_comfyui_on_path(os.environ["COMFYUI_PATH"])  # the parent sets it to this leg's ComfyUI
    sys.argv = ["main.py", *flags]
    import main  # noqa: F401  ComfyUI's own start-up: flags, Dynamic VRAM, CoreModelPatcher
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import_pack(cpu=mode == "cpu")
    import comfy.model_management as mm
    import comfyui_version

    machine = {"comfyui": comfyui_version.__version__, "torch": torch.__version__, "cuda": torch.version.cuda,
               "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() and mode != "cpu" else "cpu",
               "device": str(mm.get_torch_device())}
    rows = []
    for family in families:
        try:
            rows.append(check_family(family, mode))
        except Exception as e:  # noqa: BLE001 - one failing model is a row, not the end of the table
            import traceback
            traceback.print_exc()
            rows.append({"model": family, "patcher": "?", "differentiated": "?", "partly_loaded": "?",
                         "alpha_max_rel_error": float("nan"), "alpha_ok": False, "mask_zeroes": False,
                         "unpatch_bit_exact": False, "original_bit_identical": False, "pass": False,
                         "error": f"{type(e).__name__}: {e}"[:500]})
        mm.unload_all_models()
        mm.soft_empty_cache()
    with open(out, "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=1)
    return 0


def reload_family(family, seed, disable_dynamic=False):
    """The loader a reduced model's cached_patcher_init re-runs (as core loaders register theirs)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    from scripts.family_models import build
    # CoreModelPatcher: what loaders use (ModelPatcherDynamic under Dynamic VRAM); 0.3.75 has only ModelPatcher
    core = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    cls = comfy.model_patcher.ModelPatcher if disable_dynamic else core
    return cls(build(family, seed=seed, inference=False).model, load_device=mm.get_torch_device(),
               offload_device=mm.unet_offload_device())


def user_model(family, seed):
    """(the user's MODEL as ComfyUI hands it out, its family for the reference, conditioning width)."""
    import torch
    import comfy.sd
    if family == "sd15-file":
        from scripts.make_test_checkpoint import DEFAULT_PATH, make_sd15_test_checkpoint
        path = make_sd15_test_checkpoint(DEFAULT_PATH)
        with torch.inference_mode():
            mp = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
        return mp, "sd15", 768
    base = family.replace("-custom-loader", "")
    with torch.inference_mode():
        mp = reload_family(base, seed)
    mp.cached_patcher_init = None if family.endswith("custom-loader") else (reload_family, (base, seed))
    return mp, base, None


def check_family(family, mode):
    import torch
    import comfy.model_management as mm
    import comfy.sample
    from cad_pack.cad_core import AttributionRequest, select_components
    from cad_pack.nodes import bridge
    from scripts.family_models import EXPECTED, conditioning, empty_latent, plain_autograd_alpha

    started = time.time()
    mp, base, text_width = user_model(family, seed=3)
    pos, neg = conditioning(base, 1), conditioning(base, 2)
    if text_width:  # the checkpoint's UNet reads 768-wide text
        g = torch.Generator().manual_seed(1)
        pos, neg = ([[torch.randn((1, 7, text_width), generator=g), {}]] for _ in range(2))
    loads = watch_loads(mp, mode)
    latent = empty_latent()

    def sample(model):
        with torch.inference_mode():
            x = bridge.sampler_latent(model, latent)
            noise = comfy.sample.prepare_noise(x, 11)
            return comfy.sample.sample(model, noise, 2, GUIDANCE, "euler", "normal", pos, neg, x, seed=11,
                                       disable_pbar=True).cpu()

    before = sample(mp)
    differentiated = []
    from cad_pack.nodes.bridge import attribution as attribution_module  # where attribute_model looks it up
    original_source = attribution_module.differentiable_source

    def recording_source(model):
        ctx = original_source(model)

        class Recorder:
            def __enter__(self):
                source = ctx.__enter__()
                differentiated.append("non-dynamic reload" if source is not model else
                                      ("dynamic (safeguards)" if bridge.is_dynamic(model) else "as loaded"))
                return source

            def __exit__(self, *exc):
                return ctx.__exit__(*exc)
        return Recorder()

    attribution_module.differentiable_source = recording_source
    try:
        with torch.inference_mode():
            request = AttributionRequest(steps=STEPS, guidance=GUIDANCE, seed=SEED, scope="ff+attention")
            attribution = bridge.attribute_model(mp, pos, neg, latent, request)
    finally:
        attribution_module.differentiable_source = original_source
    keys = list(attribution.scores)
    reference_model = reference_copy(mp)
    with torch.inference_mode(False):
        expected = plain_autograd_alpha(reference_model, base, "concept_gap", keys, pos, neg, steps=STEPS, seed=SEED,
                                        guidance=GUIDANCE)
    errors, alpha_ok = [], True
    for k in keys:
        got, want = attribution.scores[k], expected[k]
        scale = want.abs().max().item()
        errors.append(((got - want).abs().max().item()) / max(scale, 1e-30))
        alpha_ok &= bool(scale > 0 and torch.allclose(got, want, rtol=1e-4, atol=1e-12 + 1e-4 * scale))

    mask = select_components(attribution, "erase", 0.05, "per_row")
    key = max(mask.indices, key=lambda k: mask.indices[k].numel())   # a large module: Dynamic VRAM wraps those
    original_weight = bridge.original_weight(mp, key).detach().to("cpu", torch.float32).clone()
    with torch.inference_mode():
        masked = bridge.apply_mask(mp, mask, 1.0)
    seen_masked = weight_used_in_forward(masked, key, pos, neg, latent)
    selected = mask.indices[key]
    others = torch.ones(original_weight.numel(), dtype=torch.bool)
    others[selected] = False
    mask_zeroes = bool(torch.all(seen_masked.reshape(-1)[selected] == 0)
                       and torch.equal(seen_masked.reshape(-1)[others], original_weight.reshape(-1)[others]))
    sample(masked)
    seen_after = weight_used_in_forward(mp, key, pos, neg, latent)
    unpatch_ok = bool(torch.equal(seen_after, original_weight))
    after = sample(mp)
    row = {"model": family, "patcher": type(mp).__name__, "differentiated": ", ".join(differentiated),
           "partly_loaded": loads.summary(), "alpha_max_rel_error": max(errors), "alpha_ok": alpha_ok,
           "mask_zeroes": mask_zeroes, "unpatch_bit_exact": unpatch_ok,
           "original_bit_identical": bool(torch.equal(before, after)), "scoped_matrices": len(keys),
           "latent_channels": EXPECTED[base]["channels"], "seconds": round(time.time() - started, 2)}
    loads.stop()
    row["pass"] = row["alpha_ok"] and mask_zeroes and unpatch_ok and row["original_bit_identical"] and \
        (mode != "lowvram" or loads.partial_seen)
    return row


def reference_copy(mp):
    """The same weights as ordinary CPU tensors in a fresh model of the same class: plain autograd runs on it
    without any ComfyUI loading (it calls apply_model directly), wherever ComfyUI put the user's weights."""
    import torch
    import comfy.model_patcher
    state = {k: v.detach().to("cpu").clone() for k, v in mp.model.state_dict().items()
             if k.startswith("diffusion_model.")}
    with torch.inference_mode(False):
        fresh = type(mp.model)(mp.model.model_config, model_type=mp.model.model_type, device=torch.device("cpu"))
        missing = [k for k in fresh.load_state_dict(state, strict=False, assign=True).missing_keys
                   if k.startswith("diffusion_model.")]
        if missing:
            raise RuntimeError(f"the reference copy lacks {missing[:3]}")
        fresh.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(fresh, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


class _Recorder:
    """A weight wrapper that keeps the weight one forward pass uses."""

    def __init__(self):
        self.seen = None

    def __call__(self, w):
        if self.seen is None:
            self.seen = w.detach().to("cpu", copy=True).float()
        return w


def weight_used_in_forward(mp, key, pos, neg, latent):
    import torch
    import comfy.sample
    from cad_pack.nodes import bridge
    probe = mp.clone()
    recorder = _Recorder()
    probe.add_weight_wrapper(key, recorder)
    with torch.inference_mode():
        x = bridge.sampler_latent(probe, latent)
        comfy.sample.sample(probe, comfy.sample.prepare_noise(x, 1), 1, 1.0, "euler", "normal", pos, neg, x, seed=1,
                            disable_pbar=True)
    bridge.remove_cad_wrappers(probe)
    for module in probe.model.modules():  # the recorder is not one of CAD's wrappers: strip it too
        for attr in ("weight_function", "bias_function"):
            if recorder in (getattr(module, attr, None) or []):
                setattr(module, attr, [f for f in getattr(module, attr) if f is not recorder])
    if recorder.seen is None:
        raise RuntimeError(f"no forward pass used {key}")
    return recorder.seen


class watch_loads:
    """Records whether ComfyUI ever loaded the model only partly; in mode lowvram also caps the free memory
    ComfyUI sees at half the model, so that it has to."""

    def __init__(self, mp, mode):
        import comfy.model_management as mm
        self.mm, self.partial_seen, self.loads = mm, False, 0
        self.original_load, self.original_free = mm.load_models_gpu, mm.get_free_memory
        size = mp.model_size()

        def load_models_gpu(models, *args, **kwargs):
            result = self.original_load(models, *args, **kwargs)
            for m in models:
                self.loads += 1
                if hasattr(m, "loaded_size") and m.loaded_size() < m.model_size():
                    self.partial_seen = True
            return result
        mm.load_models_gpu = load_models_gpu
        if mode == "lowvram":
            def get_free_memory(dev=None, torch_free_too=False):
                free = self.original_free(dev, torch_free_too)
                cap = mm.minimum_inference_memory() + size // 2
                return (min(free[0], cap), min(free[1], cap)) if isinstance(free, tuple) else min(free, cap)
            mm.get_free_memory = get_free_memory

    def summary(self):
        return "yes" if self.partial_seen else "no"

    def stop(self):
        self.mm.load_models_gpu, self.mm.get_free_memory = self.original_load, self.original_free


if __name__ == "__main__":
    sys.exit(main())
