#!/usr/bin/env bash
# The latent chain on one GPU, no finished run needed (random weights from a config): the fused
# step's tests on CUDA, then the train-step and inference ratios at the quickstart and SmolLM2-135M
# shapes (LoRi with the fused step and with the model's own layers, against No-CoT, one process
# each), then MFU with and without torch.compile. Not yet run on a GPU (our estimate: under
# 10 minutes on an H100, most of it compiling); logs to $OUT (or
# ./chain_gpu_out).
#   bash bench/chain_gpu.sh
#   DEVICE=cpu STEPS=1 SMOL_BATCH=2 N=32 bash bench/chain_gpu.sh      # smoke test on a CPU
set -uo pipefail
OUT=${OUT:-chain_gpu_out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-20}
SMOL_BATCH=${SMOL_BATCH:-64}
N=${N:-256}
PY=${PYTHON:-python3}
. "$(dirname "$0")/gpu_lib.sh" chain_gpu_log.txt
start=$(date +%s)
step $PY -m pytest -q -p no:cacheprovider tests/test_chain.py tests/test_fused_step.py
bt="--device $DEVICE --threads 8 --methods no_cot lori lori_layers"
step $PY bench/train_step.py $bt --scratch quickstart --batch-size 32 --latent-steps 4 --steps "$STEPS"
step $PY bench/train_step.py $bt --scratch smollm2 --batch-size "$SMOL_BATCH" --latent-steps 4 --steps "$STEPS"
step $PY bench/train_step.py $bt --scratch smollm2 --batch-size "$SMOL_BATCH" --latent-steps 6 --steps "$STEPS"
step $PY bench/inference.py --device "$DEVICE" --threads 8 --scratch quickstart --n "$N" --batch-size 64 1
# the baselines as their reference code runs them vs lori's recipes (bf16 autocast on CUDA)
step $PY bench/peers.py --device "$DEVICE" --threads 8 --shapes quickstart smollm2 --steps "$STEPS"
if [ "$DEVICE" = cuda ]; then
  step $PY bench/mfu.py --batch-size 64 --steps 10
  step $PY bench/mfu.py --batch-size 64 --steps 10 --compile
fi
grep -h "RESULT\|^#\|ms/\|[0-9]x$\|MFU\|FAILED\|passed\|failed" "$log" > "$OUT/chain_gpu_results.txt"
echo "total wall: $(( $(date +%s) - start )) s" | tee -a "$log"
