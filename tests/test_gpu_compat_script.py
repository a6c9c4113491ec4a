"""benchmarks/gpu_compat.py (make gpu-compat) is meant for a GPU machine, where it cannot be debugged cheaply;
its CPU mode runs every check of it here, on the ComfyUI this suite runs against, through ComfyUI's own main.py
start-up, with the real checkpoint loader and a custom-loader model among the models."""
import json
import os
import subprocess
import sys

import pytest

from conftest import COMFYUI_PATH, REPO

from scripts import cross_version as X

pytestmark = pytest.mark.slow   # make test-slow: each runs a benchmark script end to end


def test_gpu_compat_script_passes_on_the_cpu(tmp_path):
    version = ".".join(map(str, X.COMFYUI_VERSION))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_compat", "--cpu",
                           "--legs", f"{version}={sys.executable}:{COMFYUI_PATH}", "--results-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = json.loads((tmp_path / "gpu_compat_cpu.json").read_text())
    rows = table["rows"]
    assert [r["model"] for r in rows] == ["sd15", "sdxl", "flux", "sd15-file", "sd15-custom-loader"]
    for r in rows:
        assert r["pass"] and r["alpha_ok"] and r["mask_zeroes"] and r["unpatch_bit_exact"] \
            and r["original_bit_identical"], r
        assert r["alpha_max_rel_error"] < 1e-4 and r["scoped_matrices"] > 0 and r["comfyui"] == version
    assert table["runs"][0]["flags"] == ["--cpu"] and table["runs"][0]["machine"]["comfyui"] == version
    assert "| sd15-file |" in (tmp_path / "gpu_compat_cpu.md").read_text()
