# Everything runs inside .venv with a real ComfyUI 0.3.75 (see scripts/setup_env.sh).
COMFYUI_PATH ?= $(CURDIR)/.comfyui/ComfyUI
export COMFYUI_PATH
PY := .venv/bin/python

.PHONY: setup setup-browser test test-browser demo bench bench-gpu efficacy examples

setup:
	bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

setup-browser:
	bash scripts/setup_browser.sh

# The example workflows in a real Chromium on a real ComfyUI server (~3 min on 2 CPU cores): opened from the
# template browser, run with the Run button, the CAD nodes' widgets checked against /history.
# Screenshots: tests/.artifacts/browser/
test-browser: setup setup-browser
	$(PY) -m pytest -q --browser tests/browser

# Rewrite example_workflows/*.json and, by running each one, their .jpg thumbnails
examples: setup
	$(PY) scripts/make_example_workflows.py --thumbnails

demo: setup
	$(PY) scripts/demo.py

# Attribution cost on the full-size SD1.5 UNet on CPU (~20 min): benchmarks/results/attribution_cost_cpu.md
bench: setup
	$(PY) benchmarks/attribution_cost.py

# The same at 512/1024 px, fp16, T=50 on a CUDA GPU (~10 min on an H100): benchmarks/results/gpu_check_*.md
bench-gpu: setup
	bash benchmarks/gpu_check.sh

# The toy world's efficacy table (erase/amplify with controls, faithfulness): benchmarks/results/efficacy.md
efficacy: setup
	$(PY) benchmarks/efficacy.py
