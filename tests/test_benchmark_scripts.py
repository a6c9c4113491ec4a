"""The benchmark scripts behind the README's performance figures still run (reduced models, CPU), writing their
tables where CAD_BENCH_RESULTS says: a change to the pack that breaks them shows up here, not on the GPU day."""
import json
import os
import subprocess
import sys

import pytest

from conftest import COMFYUI_PATH, REPO

pytestmark = pytest.mark.slow   # make test-slow: each runs a benchmark script end to end


def run_script(tmp_path, *args):
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COMFYUI_PATH": COMFYUI_PATH,
                               "CAD_BENCH_RESULTS": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_attribution_cost_script_runs_on_reduced_models(tmp_path):
    run_script(tmp_path, "-m", "benchmarks.attribution_cost", "--tiny", "--steps", "2", "3", "--max-minutes", "1",
               "--sample-repeats", "1", "--threads", "1", "--name", "cost")
    report = (tmp_path / "cost.md").read_text()
    for section in ("## Single vs reference schedule", "## Peak memory (RSS)", "## Memory budget (chunked passes)",
                    "## Apply cost and sampling overhead", "## File sizes"):
        assert section in report, section
    # Call counts from cad_core's own schedules: `single` = T fwd+bwd + T base forwards; `reference` adds T(T-1)/2
    # guided steps of 2 forwards each (T = 2: 2 + 4, T = 3: 3 + 9)
    assert "| 2 | 2 + 2 | 2 + 4 |" in report and "| 3 | 3 + 3 | 3 + 9 |" in report


def test_gpu_check_script_dry_run(tmp_path):
    run_script(tmp_path, "-m", "benchmarks.gpu_check", "--dry-run", "--name", "gpu")
    report = (tmp_path / "gpu.md").read_text()
    assert "| sd15" in report and "| sdxl" in report
    for column in ("plain fwd+bwd+fwd", "step / plain", "emulated card", "gradient_checkpointing off (T=4)",
                   "median [IQR]"):
        assert column in report, column


def test_gpu_check_flux_dry_run_completes_under_its_budget(tmp_path):
    run_script(tmp_path, "-m", "benchmarks.gpu_check", "--dry-run", "--families", "flux", "--name", "gpu")
    report = (tmp_path / "gpu_flux.md").read_text()
    assert "## Flux.1-dev at full size under a 24 GiB cap" in report and "float8_e4m3fn" in report
    row = next(line for line in report.splitlines() if line.startswith("| Flux.1-dev fp8"))
    assert "| completed |" in row and "| 24 GiB |" in row


def test_memory_budget_holds_on_a_reduced_unet(tmp_path):
    """The budget (one step's backward, measured, + half the scope's state) against what torch really allocated."""
    run_script(tmp_path, "-m", "benchmarks.memory_budget", "--tiny", "--latent", "8", "--threads", "1", "--name", "mb")
    runs = json.loads((tmp_path / "mb.json").read_text())["runs"]
    assert [r["setting"] for r in runs] == ["off", "on"]
    for r in runs:
        assert r["passes"] >= 2 and r["activation_mb"] > 0
        assert 0 < r["peak_live"] / 2**20 <= r["budget_mb"], r


def test_checkpointing_cost_script_runs_on_a_reduced_unet(tmp_path):
    run_script(tmp_path, "-m", "benchmarks.checkpointing_cost", "--tiny", "--latent", "4", "8", "--steps", "2",
               "--threads", "1", "--name", "ck")
    report = (tmp_path / "ck.md").read_text()
    assert "## 32 px" in report and "## 64 px" in report
    assert report.count("| off | no |") == 2 and report.count("| on | yes |") == 2
    assert report.count("| auto | yes (auto: on, as always on a CPU) |") == 2


def test_apply_cost_script_runs_on_a_reduced_unet(tmp_path):
    run_script(tmp_path, "-m", "benchmarks.apply_cost", "--tiny", "--repeats", "4", "--threads", "1", "--name", "ac")
    report = (tmp_path / "ac.md").read_text()
    assert "masked / plain, per round" in report and "noise floor" in report
    assert "| float32 |" in report and "| float16 |" in report


def test_selective_erase_script_writes_its_table_from_the_run_settings(tmp_path):
    run_script(tmp_path, "-m", "benchmarks.selective_erase", "--quick", "--sections", "shapes", "--eval-seed", "20000")
    report = (tmp_path / "selective_erase.md").read_text()
    # the header comes from the run: the seeds given on the command line, disjoint from the attribution's
    assert "noise seeds 0-3" in report and "20000 + 1000 x colour index (20000, 21000, 22000, 23000)" in report
    assert "| square | K/V, per_matrix 0.1: CAD erase, protect the other shapes (subtract) |" in report
    assert "spared pictures moved" in report and "control: random, same count per matrix" in report
    data = json.loads((tmp_path / "selective_erase.json").read_text())
    rows = data["rows"]["shapes"]
    cad = [r for r in rows if not r["variant"].startswith("control")]
    assert cad and all(r["meets_bar"] in (True, False) and 0 <= r["spared_distance"] < 1 for r in cad)
    # a mask and its random control of the same size: the same count of weights
    assert {r["weights"] for r in rows if "random" in r["variant"]} <= {r["weights"] for r in cad}
    done = subprocess.run([sys.executable, "-m", "benchmarks.selective_erase", "--eval-seed", "0"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "COMFYUI_PATH": COMFYUI_PATH})
    assert done.returncode == 2 and "overlaps the attribution seeds" in done.stderr


def test_erase_vs_peers_tunes_on_validation_attacks_on_test_and_resumes(tmp_path):
    args = ["-m", "benchmarks.erase_vs_peers", "--quick", "--methods", "cad-robust", "uce",
            "--validation-eval-seed", "21000", "--test-eval-seed", "71000"]
    run_script(tmp_path, *args)
    report = (tmp_path / "erase_vs_peers.md").read_text()
    # the header comes from the run's settings: both splits' seeds, as given on the command line
    assert "pictures use seeds 21000, 22000, 23000, 24000" in report
    assert "pictures use seeds 71000, 72000, 73000, 74000" in report and "Status: complete" in report
    data = json.loads((tmp_path / "erase_vs_peers.json").read_text())
    rows = data["rows"]
    ceiling = [r for r in rows if r["split"] == "ceiling"]
    assert {r["attack"] for r in ceiling} == {"conditioning", "embedding"}
    assert all(0 <= r["asr_stated"] <= 1 and 0 <= r["asr_strong"] <= 1 for r in ceiling)
    for method in ("cad-robust", "uce"):
        val = [r for r in rows if r["method"] == method and r["split"] == "validation"]
        test = [r for r in rows if r["method"] == method and r["split"] == "test"]
        assert len(val) == 1 and len(test) == 1                      # --quick: one setting, one shape
        assert test[0]["settings"] == data["chosen"][method] == val[0]["settings"]
        assert 0 <= val[0]["asr_validation"] <= 1 and 0 <= val[0]["hmean_robust"] <= 1
        for kind in ("embedding", "conditioning"):
            assert 0 <= test[0][f"asr_{kind}_stated"] <= 1 and 0 <= test[0][f"asr_{kind}_strong"] <= 1
        assert 0 <= test[0]["asr_rece"] <= 1 and test[0]["distance_vs_random"] > 0
    robust = next(r for r in rows if r["method"] == "cad-robust" and r["split"] == "test")
    assert robust["weights_changed"] > 14 * 64 * 32      # more than every K/V entry: the image pathway too
    # --resume keeps every finished row and redoes none: the second run adds nothing
    before = (tmp_path / "erase_vs_peers.json").read_text()
    done = run_script(tmp_path, *args, "--resume")
    assert f"--resume: {len(rows)} rows kept" in done.stdout
    assert json.loads((tmp_path / "erase_vs_peers.json").read_text())["rows"] == json.loads(before)["rows"]
    done = subprocess.run([sys.executable, "-m", "benchmarks.erase_vs_peers", "--test-eval-seed", "20000"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "COMFYUI_PATH": COMFYUI_PATH})
    assert done.returncode == 2 and "seeds overlap" in done.stderr
    done = subprocess.run([sys.executable, "-m", "benchmarks.erase_vs_peers", "--stated-steps", "0"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "COMFYUI_PATH": COMFYUI_PATH})
    assert done.returncode == 2 and "at least 1 step" in done.stderr
