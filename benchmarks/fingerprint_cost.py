"""What a model fingerprint costs on full-size UNets: the current scheme (v2: a strided sample of every tensor)
against the one files before pack 0.5.0 carry (v1: the first values of 8 tensors). The fingerprint is computed
whenever CAD Attribute runs, a mask is applied and a file is loaded with its model connected.

    python -m benchmarks.fingerprint_cost            # SD1.5 and SDXL UNets, fp16, random weights, on the CPU
    python -m benchmarks.fingerprint_cost --tiny     # reduced models (checks the script)

Writes benchmarks/results/fingerprint_cost_cpu.md (or _tiny).
"""
import argparse
import os
import platform
import statistics
import time

from benchmarks import _common as C


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    C.setup(cpu=True)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from cad_pack.cad_core.fingerprint import ModelFingerprints, legacy_fingerprint, model_fingerprint
    from cad_pack.nodes.bridge import PREFIX, original_weight

    rows = []
    for family in ("sd15", "sdxl"):
        built = time.perf_counter()
        mp = C.build_unet(family, torch.float16, tiny=args.tiny)
        built = time.perf_counter() - built
        named = [(f"{PREFIX}{n}", tuple(p.shape)) for n, p in mp.model.diffusion_model.named_parameters()]
        read = lambda key: original_weight(mp, key)  # noqa: E731 - what the bridge reads
        timings = {}
        for name, compute in (("v2", model_fingerprint), ("v1", legacy_fingerprint)):
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                compute(named, read)
                seconds.append(time.perf_counter() - started)
            timings[name] = seconds
        assert ModelFingerprints(named, read).current == model_fingerprint(named, read)
        params = sum(p.numel() for p in mp.model.diffusion_model.parameters())
        rows.append({"family": family, "tensors": len(named), "parameters": params, "build_s": built,
                     "v2_ms": 1000 * statistics.median(timings["v2"]), "v1_ms": 1000 * statistics.median(timings["v1"]),
                     "v2_max_ms": 1000 * max(timings["v2"])})
        print(rows[-1], flush=True)
        del mp

    name = "fingerprint_cost_tiny" if args.tiny else "fingerprint_cost_cpu"
    lines = [f"# Fingerprint cost ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads; UNets {'reduced' if args.tiny else 'full size'}, "
             f"fp16 weights, random values; median of {args.repeats} runs. Written by benchmarks/fingerprint_cost.py.", "",
             "| model | tensors | parameters | v2: every tensor, 256 strided values (ms) | v2 slowest (ms) | "
             "v1: first 256 values of 8 tensors (ms) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['tensors']:,} | {r['parameters']:,} | {r['v2_ms']:.1f} | "
                     f"{r['v2_max_ms']:.1f} | {r['v1_ms']:.1f} |")
    os.makedirs(C.RESULTS, exist_ok=True)
    with open(os.path.join(C.RESULTS, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
