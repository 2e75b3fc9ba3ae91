#!/usr/bin/env bash
# One prepared GPU session: the CUDA-path checks, then every benchmark table on the GPU.
# Usage (on the GPU machine, from the repository root):
#   OUT=/some/dir bash benchmarks/gpu_session.sh [CHECKPOINT [BATCH_FILE]]
# Each step's table goes to stdout and to $OUT/<step>.txt; a failing step does not stop
# the others. PYTHONPATH covers a machine where the package is not pip-installed
# (.gpu_vendor may hold pure-Python dependencies such as pyyaml and tqdm).
set -u
OUT="${OUT:-benchmark_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/.gpu_vendor:${PYTHONPATH:-}"
CKPT="${1:-.gpu_vendor/check_ckpt.pt}"
BATCH="${2:-.gpu_vendor/check_batch.pt}"
step() {
  local name="$1"; shift
  echo "=== $name ($(date -u +%H:%M:%S))"
  timeout "${STEP_TIMEOUT:-240}" "$@" 2>&1 | tee "$OUT/$name.txt" | grep -v -i warn | tail -n 25
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
ARGS=()
[ -f "$CKPT" ] && ARGS+=(--weights "$CKPT")
[ -f "$BATCH" ] && ARGS+=(--batch-file "$BATCH")
step cuda_check python benchmarks/cuda_check.py "${ARGS[@]}"
step speed python benchmarks/speed.py --device cuda --repeats 10 --profile
step train_step python benchmarks/train_step.py --device cuda --m3fd --size 1024x768 --batch 1
step train_step_demo python benchmarks/train_step.py --device cuda --size 320x256 --batch 2
echo "=== done ($(date -u +%H:%M:%S))"
