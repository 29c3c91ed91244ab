#!/usr/bin/env bash
# Quickstart tuning sweep (fast on a GPU): training-set size x student batch size, LoRi vs No-CoT
# at equal steps, all through the stage CLIs. Prints one accuracy table to $OUT/sweep.txt.
#   bash bench/sweep_quickstart.sh                        # on a GPU
#   SIZES="64" STEPS=3 TEACHER_STEPS=3 DEVICE=cpu bash bench/sweep_quickstart.sh   # smoke test
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}; PY=${PYTHON:-python3}
SIZES=${SIZES:-"4000 10000 20000"}; BATCHES=${BATCHES:-"64 32"}; STEPS=${STEPS:-1000}; TEACHER_STEPS=${TEACHER_STEPS:-700}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
log="$OUT/sweep_log.txt"; table="$OUT/sweep.txt"
rt="--device $DEVICE --threads 8 --seed 0"
scratch='{"hidden_size":128,"num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":4,"intermediate_size":256,"max_position_embeddings":256,"tie_word_embeddings":true}'
run() { echo "=== $*" >>"$log"; "$@" >>"$log" 2>&1 || echo "FAILED: $*" | tee -a "$log"; }
echo "n_train method batch steps acc_test ci_low ci_high teacher_acc sec" > "$table"
for n in $SIZES; do
  R=results/sweep_$n; t0=$(date +%s)
  run $PY -m lori.prepare_data --split train --kind quickstart --n $n --out $R/data/train.jsonl
  run $PY -m lori.prepare_data --split test --kind quickstart --n 500 --out $R/data/test.jsonl --exclude $R/data/train.jsonl
  run $PY -m lori.teacher_sft --train $R/data/train.jsonl --out $R/teacher --steps $TEACHER_STEPS --scratch "$scratch" $rt
  run $PY -m lori.teacher_cot --teacher $R/teacher --train $R/data/train.jsonl --out $R/cot.jsonl --summary $R/cot.json $rt
  run $PY -m lori.dump_hidden --teacher $R/teacher --records $R/cot.jsonl --out $R/calib.zarr $rt
  run $PY -m lori.factorize --hidden $R/calib.zarr --out $R/factors.zarr --rank-layer 2 --rank-hidden 16 --center
  run $PY -m lori.targets --teacher $R/teacher --records $R/cot.jsonl --factors $R/factors.zarr --out $R/targets.zarr $rt
  run $PY -m lori.evaluate --method cot_sft --model $R/teacher --data $R/data/test.jsonl --out $R/eval_cot.jsonl $rt
  tacc=$($PY -c "import json;print(round(100*json.load(open('$R/eval_cot.json'))['accuracy'],1))" 2>/dev/null)
  for b in $BATCHES; do for m in no_cot lori; do
    s0=$(date +%s)
    run $PY -m lori.distill --method $m --teacher $R/teacher --records $R/cot.jsonl --targets $R/targets.zarr \
      --factors $R/factors.zarr --out $R/s_${m}_$b --steps $STEPS --batch-size $b $rt
    run $PY -m lori.evaluate --method $m --model $R/s_${m}_$b --data $R/data/test.jsonl --out $R/eval_${m}_$b.jsonl $rt
    $PY -c "import json;d=json.load(open('$R/eval_${m}_$b.json'));print($n,'$m',$b,$STEPS,round(100*d['accuracy'],1),round(100*d['ci_low'],1),round(100*d['ci_high'],1),'$tacc',$(( $(date +%s) - s0 )))" >> "$table" 2>>"$log"
  done; done
  echo "n=$n done in $(( $(date +%s) - t0 )) s" >> "$log"
done
cat "$table"
