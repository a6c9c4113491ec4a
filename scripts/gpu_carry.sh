#!/usr/bin/env bash
# What a GPU machine lent by the device tool lacks, packed here into .gpu-carry/ (git-ignored) so one `run` can
# carry it (the tool sends at most 64 MiB: the working tree plus the carried paths). That machine's image has
# Python 3.12 with torch, numpy, safetensors, transformers, aiohttp, pillow, scipy, ... but no ComfyUI and none of
# the packages below, and it cannot download anything. benchmarks/gpu_session.sh unpacks it there.
# tests/test_gpu_session.py (slow) rehearses that here: the session's CPU run with only the image's packages
# (tests/data/gpu_image_packages.txt) and the carried ones importable.
#
#   bash scripts/gpu_carry.sh            (make gpu-carry; needs `make setup setup-0.33` and PyPI)
#   GPU_CARRY_PYTHON=3.11 GPU_CARRY_OUT=/tmp/carry bash scripts/gpu_carry.sh    for this machine's Python
#
#   .gpu-carry/comfyui-0.3.75.tar.xz    the managed ComfyUI 0.3.75 tree, without what an in-process run never
#   .gpu-carry/comfyui-0.33.0.tar.xz    imports (API nodes, tests, blueprints, caches)
#   .gpu-carry/wheels/                  cp312 wheels of the packages ComfyUI imports in-process (main.py,
#                                       comfy.*, comfy_api) that the image lacks, at the versions the CPU legs pin
#
# comfy-kitchen is carried without its compiled CUDA/ROCm backends (56 MiB of the 58; built for torch 2.14, they
# would not load into the image's torch anyway): ComfyUI then uses its eager/triton backends, which only fp8/fp4
# *quantized* layouts use; CAD's checks use plain fp16/fp32 weights and fp8 storage with a manual cast.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${GPU_CARRY_OUT:-.gpu-carry}"
BUDGET_BYTES=$((64 * 1024 * 1024))
PY=.venv/bin/python
PYTHON_VERSION="${GPU_CARRY_PYTHON:-3.12}"   # the image's python3
# name==version, from requirements-comfyui-0.33.txt / what ComfyUI's in-process import pulls in (its dependencies
# included) and the image does not hold (device KINDS.md, "Python packages already there")
WHEELS=(av==18.1.0 alembic==1.20.1 Mako==1.4.3 SQLAlchemy==2.1.9 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 blake3==1.0.11 comfy-aimdo==0.4.13 comfy-kitchen==0.2.31
        torchsde==0.2.6 trampoline==0.1.2)

for tree in .comfyui/ComfyUI .comfyui/ComfyUI-0.33.0; do
  [ -f "$tree/main.py" ] || { echo "[gpu-carry] $tree is missing: run 'make setup setup-0.33' first" >&2; exit 2; }
done
rm -rf "$OUT" && mkdir -p "$OUT/wheels"
printf '%s\n' "${WHEELS[@]%%==*}" > "$OUT/carried.txt"   # the distributions carried (tests/gpu_image/ reads it)

pack_tree() {  # $1 tree, $2 archive
  tar -C "$1" -cf - --exclude=__pycache__ --exclude=./comfy_api_nodes --exclude=./tests --exclude=./tests-unit \
      --exclude=./blueprints --exclude=./user --exclude=./temp . | xz -9 -T2 > "$2"
}
pack_tree .comfyui/ComfyUI "$OUT/comfyui-0.3.75.tar.xz"
pack_tree .comfyui/ComfyUI-0.33.0 "$OUT/comfyui-0.33.0.tar.xz"

"$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: --implementation cp \
  --python-version "$PYTHON_VERSION" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$OUT/wheels" "${WHEELS[@]}"

# comfy-kitchen without its compiled backends/{cuda,hip}/_C*.so (see above); the wheel's RECORD keeps naming them, which
# pip does not check on install
KITCHEN="$(ls "$OUT"/wheels/comfy_kitchen-*.whl)"
"$PY" - "$KITCHEN" <<'EOF'
import os, sys, zipfile
path = sys.argv[1]
slim = path + ".slim"
with zipfile.ZipFile(path) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        name = item.filename
        if "/backends/" in name and os.path.basename(name).startswith("_C") and name.endswith(".so"):
            continue
        dst.writestr(item, src.read(item.filename))
os.replace(slim, path)
EOF

tree_bytes=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
carry_bytes=$(du -cb "$OUT" | tail -1 | cut -f1)
total=$((tree_bytes + carry_bytes))
printf '[gpu-carry] %s: %.1f MiB; with the working tree (%.1f MiB): %.1f MiB of the 64 MiB the device tool sends\n' \
  "$OUT" "$(echo "$carry_bytes / 1048576" | bc -l)" "$(echo "$tree_bytes / 1048576" | bc -l)" \
  "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$BUDGET_BYTES" ]; then
  echo "[gpu-carry] over the device tool's 64 MiB: carry less" >&2
  exit 1
fi
