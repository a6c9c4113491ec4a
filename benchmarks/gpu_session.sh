#!/usr/bin/env bash
# The GPU checks in one command, on a machine the device tool lends (its image: python3 with torch, no ComfyUI,
# no network). Prepare here with `make gpu-carry` (scripts/gpu_carry.sh), then, from the repository root:
#
#   run(command="bash benchmarks/gpu_session.sh compat bench", carry=[".gpu-carry"], timeout_s=560)
#   run(command="bash benchmarks/gpu_session.sh flux", carry=[".gpu-carry"], timeout_s=400)   # if time is left
#
# It installs the carried wheels into .gpu-site (on PYTHONPATH, over the image's own packages), unpacks both
# ComfyUI trees into .comfyui/, and runs the steps named, each under its own time limit, so that one failing
# leaves the others' tables and time to rerun it:
#   compat  make gpu-compat's checks: both legs, every memory mode -> $OUT/gpu_compat_<GPU>.md/.json
#   bench   make bench-gpu's table: SD1.5 512 px and SDXL 1024 px, T=50 -> $OUT/gpu_check_<GPU>.md/.json
#   flux    make bench-gpu-flux's: Flux.1-dev fp8 under a 24 GiB cap -> $OUT/gpu_check_<GPU>_flux.md/.json
# The tables land in $OUT (the device tool brings that folder back; default output/gpu/); copy them to
# benchmarks/results/ and commit them. GPU_SESSION_DRY=1 runs the same steps on a CPU (reduced models): a rehearsal.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/output/gpu}"
mkdir -p "$OUT"
STARTED=$SECONDS
BUDGET_S="${GPU_SESSION_SECONDS:-540}"
PY="${GPU_SESSION_PYTHON:-python3}"
DRY="${GPU_SESSION_DRY:-0}"
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(compat bench)
log() { echo "[gpu-session $((SECONDS - STARTED))s] $*" | tee -a "$OUT/gpu_session.log"; }
left() { echo $((BUDGET_S - (SECONDS - STARTED))); }

log "steps: ${STEPS[*]}; budget ${BUDGET_S}s; python: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch",
  torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | tee -a "$OUT/gpu_session.log"

# The environment: carried wheels over the image's packages, both ComfyUI trees
[ -d .gpu-carry/wheels ] || { log "no .gpu-carry/: run 'make gpu-carry' here and carry it"; exit 2; }
if [ ! -f .gpu-site/.installed ]; then
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --target .gpu-site .gpu-carry/wheels/*.whl \
    && touch .gpu-site/.installed || { log "installing the carried wheels failed"; exit 2; }
fi
export PYTHONPATH="$PWD/.gpu-site${PYTHONPATH:+:$PYTHONPATH}"
for leg in 0.3.75:.comfyui/ComfyUI 0.33.0:.comfyui/ComfyUI-0.33.0; do
  version="${leg%%:*}" dest="${leg#*:}"
  if [ ! -f "$dest/main.py" ]; then
    mkdir -p "$dest" && tar -xJf ".gpu-carry/comfyui-$version.tar.xz" -C "$dest" || { log "unpacking $version failed"; exit 2; }
  fi
done
log "environment ready"

status=0
run_step() {  # name, share of what is left (percent), command...
  local name="$1" share="$2"; shift 2
  local limit=$(( $(left) * share / 100 ))
  if [ "$limit" -lt 30 ]; then log "$name: skipped, ${limit}s left for it"; status=1; return; fi
  log "$name: start (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >>"$OUT/gpu_session.log" 2>&1
  local rc=$?
  log "$name: exit $rc"
  [ $rc -eq 0 ] || status=1
}
export CAD_BENCH_RESULTS="$OUT"
for step in "${STEPS[@]}"; do
  case "$step" in
    compat)
      run_step compat 40 "$PY" -m benchmarks.gpu_compat $([ "$DRY" = 1 ] && echo --cpu) --results-dir "$OUT" \
        --legs "0.33.0=$PY:$PWD/.comfyui/ComfyUI-0.33.0" "0.3.75=$PY:$PWD/.comfyui/ComfyUI" ;;
    bench)
      COMFYUI_PATH="$PWD/.comfyui/ComfyUI" run_step bench 95 "$PY" -m benchmarks.gpu_check \
        $([ "$DRY" = 1 ] && echo --dry-run --name gpu_check_rehearsal) --time-budget-s $(( $(left) * 70 / 100 )) ;;
    flux)
      COMFYUI_PATH="$PWD/.comfyui/ComfyUI" run_step flux 95 "$PY" -m benchmarks.gpu_check --families flux \
        $([ "$DRY" = 1 ] && echo --dry-run --name gpu_check_rehearsal) ;;
    *) log "unknown step '$step' (compat, bench, flux)"; status=2 ;;
  esac
done
log "done: $(ls "$OUT" | tr '\n' ' ')"
exit $status
