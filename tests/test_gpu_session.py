"""benchmarks/gpu_session.sh, the GPU checks in one command for a machine the device tool lends, rehearsed here:
scripts/gpu_carry.sh packs what that machine lacks (for this machine's Python), the session unpacks it into a
copy of the repository and runs its steps on the CPU (reduced models) with only the GPU image's packages and the
carried ones importable (tests/gpu_image/). A package ComfyUI or the pack needs that is neither on the image nor
carried fails it, so the first real GPU session does not spend its minutes finding out."""
import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow   # make test-slow: builds the carry (PyPI) and runs the session (~2 min)
TREES = [os.path.join(REPO, ".comfyui", "ComfyUI"), os.path.join(REPO, ".comfyui", "ComfyUI-0.33.0")]
LEG_033_VENV = os.path.join(REPO, ".venv-comfyui-0.33")


def test_the_gpu_session_runs_from_the_carry_with_only_the_image_packages(tmp_path):
    # The 0.33 leg's Python stands in for the image's: like it, it has torchaudio (0.33's comfy.sd imports it),
    # which the 0.3.75 leg's .venv has not; so this runs in make test-slow-0.33, after both trees are set up.
    if os.path.realpath(sys.prefix) != os.path.realpath(LEG_033_VENV) or \
            not all(os.path.isfile(os.path.join(tree, "main.py")) for tree in TREES):
        pytest.skip("runs on the 0.33.0 leg (make test-slow-0.33), with both managed ComfyUI trees set up")
    carry = tmp_path / "repo" / ".gpu-carry"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPU_CARRY_OUT": str(carry),
           "GPU_CARRY_PYTHON": ".".join(platform.python_version_tuple()[:2])}
    built = subprocess.run(["bash", "scripts/gpu_carry.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    assert "of the 64 MiB the device tool sends" in built.stdout

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):   # the working tree as the device tool sends it, without .comfyui or venvs
        source, target = os.path.join(REPO, name), tmp_path / "repo" / name
        if os.path.isfile(source):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(open(source, "rb").read())
    out = tmp_path / "out"
    session = subprocess.run(
        ["bash", "benchmarks/gpu_session.sh", "compat", "bench"], cwd=tmp_path / "repo", capture_output=True, text=True,
        timeout=900, env={**env, "OUT": str(out), "GPU_SESSION_DRY": "1", "GPU_SESSION_PYTHON": sys.executable,
                          "PYTHONPATH": os.path.join(REPO, "tests", "gpu_image"),
                          "CAD_GPU_IMAGE_PACKAGES": os.path.join(REPO, "tests", "data", "gpu_image_packages.txt"),
                          "CAD_GPU_CARRIED": str(carry / "carried.txt")})
    log = (out / "gpu_session.log").read_text() if (out / "gpu_session.log").exists() else ""
    assert session.returncode == 0, session.stdout[-2000:] + "\n".join(line for line in log.splitlines() if "Error" in line or "FAILED" in line or "failed" in line)[-4000:]
    assert "[gpu image]" not in log
    compat = json.loads((out / "gpu_compat_cpu.json").read_text())
    rows = compat["rows"]
    assert len(rows) == 10 and all(row["pass"] for row in rows), rows
    assert {row["comfyui"] for row in rows} == {"0.3.75", "0.33.0"}
    bench = json.loads((out / "gpu_check_rehearsal.json").read_text())
    assert bench["dry_run"] and set(bench["families"]) == {"sd15", "sdxl"}
