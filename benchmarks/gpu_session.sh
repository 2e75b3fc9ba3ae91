#!/usr/bin/env bash
# One prepared GPU session: the CUDA-path checks, then every benchmark table on the GPU.
# Usage (on the GPU machine, from the repository root):
#   OUT=/some/dir bash benchmarks/gpu_session.sh [CHECKPOINT [BATCH_FILE]]
# Each step's table goes to stdout and to $OUT/<step>.txt; a failing step does not stop
# the others. PYTHONPATH covers a machine where the package is not pip-installed (it needs
# torch, torchvision, numpy, opencv, pyyaml, tqdm there); PYTHON picks the interpreter.
set -u
OUT="${OUT:-benchmark_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
CKPT="${1:-.gpu_vendor/check_ckpt.pt}"
BATCH="${2:-.gpu_vendor/check_batch.pt}"
# step NAME SECONDS COMMAND...: a step is cut at SECONDS (times STEP_TIMEOUT_SCALE).
step() {
  local name="$1" seconds="$2"; shift 2
  echo "=== $name ($(date -u +%H:%M:%S))"
  timeout "$(( seconds * ${STEP_TIMEOUT_SCALE:-1} ))" "$@" 2>&1 | tee "$OUT/$name.txt" | grep -v -i warn | tail -n 25
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
ARGS=()
[ -f "$CKPT" ] && ARGS+=(--weights "$CKPT")
[ -f "$BATCH" ] && ARGS+=(--batch-file "$BATCH")
# The speed table first: it holds the acceptance figures of the speed issue. Eager and
# CUDA-graph rows come from the same run, so their ratio is measured on one card.
step speed 200 "$PY" benchmarks/speed.py --device cuda --repeats 10 --cuda-graph --profile
step cuda_check 90 "$PY" benchmarks/cuda_check.py "${ARGS[@]}" --score "${SCORE:-0.5}"
# The region maps' one-pass upsampling against one F.interpolate per level (issue 20).
step region_upsampling 60 "$PY" benchmarks/region_upsampling.py --device cuda
# The compiled backbone, fusion head and detection stages, captured in the same graphs.
step speed_compiled 240 "$PY" benchmarks/speed.py --device cuda --repeats 10 --cuda-graph --compile
step train_step 60 "$PY" benchmarks/train_step.py --device cuda --m3fd --size 1024x768 --batch 1
echo "=== done ($(date -u +%H:%M:%S))"
