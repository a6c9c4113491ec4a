# Everything runs inside .venv with a real ComfyUI 0.3.75 (see scripts/setup_env.sh).
COMFYUI_PATH ?= $(CURDIR)/.comfyui/ComfyUI
export COMFYUI_PATH
PY := .venv/bin/python

.PHONY: setup test demo

setup:
	bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) scripts/demo.py
