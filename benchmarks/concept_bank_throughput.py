"""Concept bank throughput: the same bank of concepts on the CAD Demo Model with 1, then 2 local ComfyUI servers
(scripts/concept_bank.py, each server a fresh `main.py --cpu`), in concepts per minute.

    python -m benchmarks.concept_bank_throughput [--steps 20] [--threads 1]

Writes benchmarks/results/concept_bank_cpu.md (or CAD_BENCH_RESULTS/<name>.md). Times are the bank command's wall
time once every server answers (server start-up not counted; the first prompt on each server loads the model).
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

from benchmarks._common import RESULTS, comfyui_version, cpu_name, table
from scripts.comfy_server import ComfyServer, reset_dir


CONCEPTS = ["a circle", "a square", "a triangle", "a cross", "a red circle | a red", "a blue cross | a blue"]
BANK = ["-m", "scripts.concept_bank"]  # run from the repo root


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="CAD Attribute steps per concept (the node's default)")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server (OMP_NUM_THREADS)")
    p.add_argument("--servers", type=int, nargs="+", default=[1, 2], help="server counts to measure")
    p.add_argument("--name", default="concept_bank_cpu")
    return p.parse_args()


def run_bank(urls, work, args) -> tuple[float, dict]:
    """Seconds the bank took on these servers, and how many concepts each server did."""
    import json
    concepts = os.path.join(work, "concepts.txt")
    with open(concepts, "w") as f:
        f.write("\n".join(CONCEPTS) + "\n")
    out = os.path.join(work, f"out_{len(urls)}")
    cmd = [sys.executable, *BANK, concepts, "--demo-model", "--out", out, "--steps", str(args.steps),
           "--samples", str(args.samples), "--ratio", "0.05", "--save", "both"]
    for url in urls:
        cmd += ["--server", url]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the bank failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with open(os.path.join(out, "index.json")) as f:
        entries = json.load(f)["concepts"]
    per_server = {url: sum(e["server"] == url for e in entries) for url in urls}
    return seconds, per_server


def measure(count: int, work: str, args) -> dict:
    servers = []
    try:
        for i in range(count):
            base = os.path.join(work, f"server_{count}_{i}")
            reset_dir(base)
            servers.append(ComfyServer(base, log_path=os.path.join(work, f"server_{count}_{i}.log")).start())
        seconds, per_server = run_bank([s.url for s in servers], work, args)
    finally:
        for server in servers:
            server.stop()
    return {"servers": count, "seconds": seconds, "per_minute": 60 * len(CONCEPTS) / seconds,
            "split": " + ".join(str(n) for n in per_server.values())}


def main():
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # inherited by the servers
    with tempfile.TemporaryDirectory(prefix="cad-bank-bench-") as work:
        results = [measure(n, work, args) for n in args.servers]
    first = results[0]
    rows = [(r["servers"], f"{r['seconds']:.1f}", f"{r['per_minute']:.2f}", r["split"],
             f"{r['per_minute'] / first['per_minute']:.2f}x") for r in results]
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    report = "\n".join([
        f"# Concept bank throughput ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores shared with another job (load average "
        f"{load} at the end), Python {platform.python_version()}, ComfyUI {comfyui_version()}; each server "
        f"`main.py --cpu` with {args.threads} torch thread(s) (OMP_NUM_THREADS). Written by "
        f"benchmarks/concept_bank_throughput.py.", "",
        f"Bank: {len(CONCEPTS)} concepts ({', '.join(repr(c) for c in CONCEPTS)}) on the CAD Demo Model; "
        f"concept_gap, scope ff, {args.steps} steps, {args.samples} sample(s), 64x64, erase mask per_row 0.05; "
        f"attribution and mask saved per concept. Wall time of scripts/concept_bank.py from start to exit, "
        f"servers already answering (start-up not counted).", "",
        table(["servers", "wall time (s)", "concepts/min", "concepts per server", "vs 1 server"], rows), "",
        "With 2 cores shared with another job, two servers compete for the same cores: the second server's "
        "gain here says little about machines with a core (or a GPU) per server.", ""])
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{args.name}.md")
    with open(path, "w") as f:
        f.write(report)
    print(report)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
