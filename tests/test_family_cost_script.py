"""benchmarks/family_cost.py (the full-size cost table the README quotes) still runs: reduced configs, every row."""
import json
import os
import subprocess
import sys

import pytest

from conftest import COMFYUI_PATH, REPO

pytestmark = pytest.mark.slow   # make test-slow: each runs a benchmark script end to end


def test_family_cost_script_builds_every_row(tmp_path):
    out = tmp_path / "cost"
    done = subprocess.run([sys.executable, "-m", "benchmarks.family_cost", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COMFYUI_PATH": COMFYUI_PATH})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = json.loads((tmp_path / "cost.json").read_text())
    rows = table["rows"] if isinstance(table, dict) else table
    names = [r["model"] for r in rows]
    for expected in ("SD1.5", "SDXL", "Flux.2-dev", "Qwen-Image", "Z-Image Turbo", "Chroma", "HiDream-I1 Full",
                     "Wan 2.2 TI2V 5B", "HunyuanVideo 1.0", "LTX-Video 2B"):
        assert any(n.startswith(expected) for n in names), (expected, names)
    assert all(r["ff"]["weights"] > 0 and r["ff"]["state_bytes"] == 8 * r["ff"]["weights"] for r in rows), rows
