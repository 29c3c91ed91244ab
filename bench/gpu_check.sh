#!/usr/bin/env bash
# One prepared GPU session: the quickstart stages on CUDA (no Snakemake needed), then
# benchmarks 1-4. Writes logs and tables to $OUT (or ./gpu_out).
#   bash bench/gpu_check.sh                 # full (teacher 700 steps, students 1000)
#   TEACHER_STEPS=5 STUDENT_STEPS=3 N_TRAIN=64 DEVICE=cpu bash bench/gpu_check.sh   # smoke test on a CPU
set -uo pipefail
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
TEACHER_STEPS=${TEACHER_STEPS:-700}
STUDENT_STEPS=${STUDENT_STEPS:-1000}
N_TRAIN=${N_TRAIN:-4000}
R=${RUN_DIR:-results/gpu}
PY=${PYTHON:-python3}
. "$(dirname "$0")/gpu_lib.sh" gpu_log.txt
rt="--device $DEVICE --threads 8 --seed 0"
start=$(date +%s)
step $PY -m lori.prepare_data --split train --kind quickstart --n "$N_TRAIN" --out $R/data/train.jsonl
step $PY -m lori.prepare_data --split test --kind quickstart --n 500 --out $R/data/test.jsonl --exclude $R/data/train.jsonl
step $PY -m lori.teacher_sft --train $R/data/train.jsonl --out $R/teacher --metrics $R/teacher_metrics.jsonl --steps "$TEACHER_STEPS" \
  --scratch '{"hidden_size":128,"num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":4,"intermediate_size":256,"max_position_embeddings":256,"tie_word_embeddings":true}' $rt
step $PY -m lori.teacher_cot --teacher $R/teacher --train $R/data/train.jsonl --out $R/teacher_cot/train.jsonl --summary $R/teacher_cot/summary.json $rt
step $PY -m lori.dump_hidden --teacher $R/teacher --records $R/teacher_cot/train.jsonl --out $R/hidden/calib.zarr $rt
step $PY -m lori.factorize --hidden $R/hidden/calib.zarr --out $R/lowrank/factors.zarr --rank-layer 2 --rank-hidden 16 --center
step $PY -m lori.targets --teacher $R/teacher --records $R/teacher_cot/train.jsonl --factors $R/lowrank/factors.zarr --out $R/targets/train.zarr $rt
for m in lori no_cot; do
  step $PY -m lori.distill --method $m --teacher $R/teacher --records $R/teacher_cot/train.jsonl --targets $R/targets/train.zarr \
    --factors $R/lowrank/factors.zarr --out $R/students/$m --metrics $R/students/${m}_metrics.jsonl --steps "$STUDENT_STEPS" $rt
done
for m in cot_sft lori no_cot; do
  model=$R/students/$m; [ $m = cot_sft ] && model=$R/teacher
  step $PY -m lori.evaluate --method $m --model $model --data $R/data/test.jsonl --out $R/eval/$m/test.jsonl $rt
done
echo "pipeline wall: $(( $(date +%s) - start )) s" | tee -a "$log"
cat $R/eval/*/test.json > "$OUT/eval_summaries.json" 2>/dev/null
grep -h "sec_per_step" $R/students/*_metrics.jsonl 2>/dev/null | tail -2 >> "$log"
bt="--device $DEVICE --threads 8 --run $R"
step $PY bench/inference.py $bt --batch-size 64 1 --n 256
step $PY bench/dump.py $bt
step $PY bench/train_step.py $bt
[ "$DEVICE" = cuda ] && step $PY bench/mfu.py --batch-size 64 --steps 10
grep -h "RESULT\|^#\|ms/\|MFU\|faster" "$log" > "$OUT/bench_results.txt"
echo "total wall: $(( $(date +%s) - start )) s" | tee -a "$log"
