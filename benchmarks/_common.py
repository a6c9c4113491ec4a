"""Shared set-up for the benchmarks: ComfyUI importable, the pack importable as `cad_pack`, full-size
random-weight UNets built from ComfyUI's own classes, conditioning, timers and memory probes.

Weights are random (N(0, 1/fan_in), norms 1, biases 0: activations stay O(1) in fp16 too); cost does not
depend on the values. Architectures are ComfyUI's SD1.5 and SDXL UNet configurations
(comfy/model_detection.py), built through comfy.supported_models, so layer shapes and op paths are real.
"""
import math
import os
import platform
import sys
import threading
import time

from scripts.pack_bootstrap import REPO, comfyui_root, import_pack

# CAD_BENCH_RESULTS: another folder for the tables (the tests run the scripts there on reduced models)
RESULTS = os.environ.get("CAD_BENCH_RESULTS") or os.path.join(REPO, "benchmarks", "results")

# ComfyUI's own unet configs for the two families (comfy/model_detection.py, 0.3.75).
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
TEXT = {"sd15": (768, None), "sdxl": (2048, 1280)}
# --tiny: the same families at a width and depth that run in seconds on CPU (dry runs of the scripts only)
TINY = {"sd15": {"model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
                 "transformer_depth_output": [1, 1, 1, 1]},
        "sdxl": {"model_channels": 64, "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
                 "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1}}


def setup(cpu: bool = True):
    """ComfyUI importable (COMFYUI_PATH or .comfyui/ComfyUI), device chosen, the pack loaded as `cad_pack`."""
    if "comfy.model_management" in sys.modules:
        raise RuntimeError("comfy.model_management was imported before the device was chosen")
    import_pack(cpu=cpu)


def build_unet(family: str, dtype, seed: int = 0, device=None, tiny: bool = False):
    """ModelPatcher around a full-size random `family` UNet ('sd15' or 'sdxl'), built under inference mode."""
    import torch
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    config = {"sd15": (comfy.supported_models.SD15, SD15_UNET), "sdxl": (comfy.supported_models.SDXL, SDXL_UNET)}
    cls, unet = config[family]
    cfg = cls({**unet, **(TINY[family] if tiny else {})})
    load_device = mm.get_torch_device() if device is None else device
    cfg.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device, cfg.supported_inference_dtypes))
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.inference_mode():
        model = cfg.get_model({}, device=torch.device("cpu"))
        for module in model.diffusion_model.modules():
            norm = isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm))
            for name, p in module.named_parameters(recurse=False):
                if p.ndim == 1:
                    p.fill_(1.0 if norm and name == "weight" else 0.0)
                else:
                    fan_in = math.prod(p.shape[1:])
                    p.copy_(torch.randn(p.shape, generator=g).mul_(1.0 / math.sqrt(fan_in)).to(p.dtype))
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


def meta_unet_shapes(family: str):
    """(key, shape) of every weight ComfyUI can patch in the full-size `family` UNet, without allocating it."""
    import torch
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.supported_models
    from cad_pack.nodes.bridge import op_weight_shapes
    cls, unet = {"sd15": (comfy.supported_models.SD15, SD15_UNET), "sdxl": (comfy.supported_models.SDXL, SDXL_UNET)}[family]
    cfg = cls(dict(unet))
    net = openaimodel.UNetModel(**{**cfg.unet_config, "dtype": torch.float16}, device="meta",
                                operations=comfy.ops.disable_weight_init)
    return op_weight_shapes(net)


def conditioning(family: str, seed: int, size_px: int):
    """CONDITIONING shaped like the family's CLIP Text Encode output (random values)."""
    import torch
    dim, pooled = TEXT[family]
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        extras = {}
        if pooled:
            extras = {"pooled_output": torch.randn((1, pooled), generator=g), "width": size_px, "height": size_px,
                      "target_width": size_px, "target_height": size_px}
        return [[torch.randn((1, 77, dim), generator=g), extras]]


def empty_latent(latent_px: int):
    import torch
    with torch.inference_mode():
        return {"samples": torch.zeros((1, 4, latent_px, latent_px))}


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled every few ms)."""

    def __init__(self, interval=0.005):
        import psutil
        self.process, self.interval, self.peak, self.start = psutil.Process(), interval, 0, 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        return False


def sd15_child(args):
    """The start of a benchmark child process on the full-size SD1.5 UNet (fp32, CPU; reduced with args.tiny):
    returns torch, the ModelPatcher, the latent side (args.latent[0]), positive and base conditioning for it, and
    the process RSS with the model loaded."""
    setup(cpu=True)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    mp = build_unet("sd15", torch.float32, tiny=args.tiny)
    latent = args.latent[0]
    pos, base = conditioning("sd15", 1, latent * 8), conditioning("sd15", 2, latent * 8)
    return torch, mp, latent, pos, base, rss()


def step_backward_bytes(mp, pos, neg, latent_px: int, checkpointed: bool, scope: str = "ff") -> int:
    """What memory_budget_mb reserves for one differentiated step of an attribution of `scope` at this latent size
    (CAD's own measurement: activation_memory.SavedForBackward.peak_bytes)."""
    import torch
    from cad_pack.cad_core import resolve_scope
    from cad_pack.nodes.bridge import differentiable_source, patchable_weights
    from cad_pack.nodes.bridge.attribution import measure_activations
    keys = resolve_scope(patchable_weights(mp), scope)
    with torch.inference_mode(), differentiable_source(mp) as source:
        saved = measure_activations(mp, pos, neg, empty_latent(latent_px), source=source, keys=keys, guidance=3.0,
                                    seed=0)
    return saved.peak_bytes(checkpointed)


def rss() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def comfyui_version() -> str:
    """The version of the ComfyUI the benchmarks use (COMFYUI_PATH or .comfyui/ComfyUI), read from its
    comfyui_version.py, so it works without ComfyUI on sys.path too (benchmarks that only drive servers)."""
    try:
        with open(os.path.join(comfyui_root(), "comfyui_version.py")) as f:
            return f.read().split('"')[1]
    except (OSError, IndexError):
        return "?"


def machine(cuda: bool = False) -> dict:
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_name(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/meminfo") as f:
            info["ram_gib"] = round(int(f.readline().split()[1]) / 2 ** 20, 1)
    except OSError:
        info["ram_gib"] = None
    try:
        info["load_average"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        info["load_average"] = None
    info["comfyui"] = comfyui_version()
    if cuda and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{p.name}, {p.total_memory / 2 ** 30:.0f} GiB"
    return info


def machine_line(threads: int) -> str:
    """The machine a toy-world table was measured on, in one line for its header."""
    import torch
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{threads} torch thread(s)")


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def spread(times) -> str:
    """Interquartile range 'q1-q3 s' of timed calls (min-max below 4 calls)."""
    import statistics
    if len(times) < 4:
        return f"{min(times):.3f}-{max(times):.3f} s"
    q1, _, q3 = statistics.quantiles(times, n=4)
    return f"{q1:.3f}-{q3:.3f} s"


def mib(n_bytes) -> str:
    return f"{n_bytes / 2 ** 20:,.0f} MiB"


def count_selected_per_row(named_shapes, ratio):
    """Upper bound of per_row selection size: rows * int(ratio * in_features) (all picked scores positive)."""
    total = 0
    for _, shape in named_shapes:
        rows, cols = shape[0], math.prod(shape[1:])
        total += rows * int(ratio * cols)
    return total
