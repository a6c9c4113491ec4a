#!/usr/bin/env bash
# The GPU benchmark (benchmarks/gpu_check.py) with the repo's environment: SD1.5 512x512 and SDXL 1024x1024,
# fp16, T=50, both schedules, peak VRAM under the memory caps, step time against plain
# forward+backward+forward, apply/sampling overhead -> benchmarks/results/gpu_check_<GPU>.md/.json
#   bash benchmarks/gpu_check.sh              # on a CUDA machine after `make setup` (about 8 minutes on an H100)
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: CPU, reduced models, T=2
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
export COMFYUI_PATH="${COMFYUI_PATH:-$PWD/.comfyui/ComfyUI}"
if ! command -v "$PY" >/dev/null || [ ! -f "$COMFYUI_PATH/main.py" ]; then
  echo "environment missing: run 'make setup' first (or set PY and COMFYUI_PATH)" >&2
  exit 2
fi
exec "$PY" -m benchmarks.gpu_check "$@"
