#!/usr/bin/env bash
# GPU determinism and resume check (docs/reliability.md): teacher_sft and a lori student on CUDA,
# each twice uninterrupted, plus once killed with SIGKILL after its first checkpoint and rerun.
# Prints whether the weight files are bitwise equal. Writes a log to $OUT (or ./gpu_out).
#   bash bench/reliability_gpu.sh            # on a GPU machine
#   DEVICE=cpu bash bench/reliability_gpu.sh # the same on CPU (everything must be equal)
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}; PY=${PYTHON:-python3}; R=${RUN_DIR:-/tmp/lori_rel}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
rm -rf "$R"; mkdir -p "$R"
rt="--device $DEVICE --threads 4 --seed 0"
scratch='{"hidden_size":128,"num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":4,"intermediate_size":256,"max_position_embeddings":256,"tie_word_embeddings":true}'
$PY -m lori.prepare_data --split train --kind quickstart --n 2000 --out $R/train.jsonl >/dev/null 2>&1
sft="--train $R/train.jsonl --scratch $scratch --steps 150 --batch-size 64 --checkpoint-every 50 $rt"

killed_run() {  # $1 = module, $2 = out dir, rest = args: start, SIGKILL after the first checkpoint, rerun
  local mod=$1 out=$2; shift 2
  $PY -m $mod "$@" --out $out >$R/log_killed 2>&1 & local pid=$!
  while [ ! -f $out.ckpt/meta.json ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  echo "killed $mod at checkpoint step $(cat $out.ckpt/meta.json 2>/dev/null); output exists after kill: $([ -e $out ] && echo yes || echo no)"
  $PY -m $mod "$@" --out $out >>$R/log_killed 2>&1 || echo "FAILED rerun of $mod"
}
same() { cmp -s "$1" "$2" && echo "$3: bitwise EQUAL" || echo "$3: DIFFERENT"; }

{
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  for run in a b; do $PY -m lori.teacher_sft $sft --out $R/teacher_$run > $R/log_$run 2>&1 || echo "FAILED teacher $run"; done
  killed_run lori.teacher_sft $R/teacher_k $sft
  same $R/teacher_a/model.safetensors $R/teacher_b/model.safetensors "teacher_sft run a vs run b"
  same $R/teacher_a/model.safetensors $R/teacher_k/model.safetensors "teacher_sft uninterrupted vs killed+resumed"
  $PY -m lori.dump_hidden --teacher $R/teacher_a --records $R/train.jsonl --out $R/h.zarr --calibration-size 256 $rt >/dev/null 2>&1
  $PY -m lori.factorize --hidden $R/h.zarr --out $R/f.zarr --rank-layer 2 --rank-hidden 16 >/dev/null 2>&1
  $PY -m lori.targets --teacher $R/teacher_a --records $R/train.jsonl --factors $R/f.zarr --out $R/t.zarr $rt >/dev/null 2>&1
  st="--method lori --teacher $R/teacher_a --records $R/train.jsonl --targets $R/t.zarr --factors $R/f.zarr --steps 60 --batch-size 64 --checkpoint-every 20 $rt"
  for run in a b; do $PY -m lori.distill $st --out $R/lori_$run > $R/log_s$run 2>&1 || echo "FAILED student $run"; done
  killed_run lori.distill $R/lori_k $st
  same $R/lori_a/model.safetensors $R/lori_b/model.safetensors "distill[lori] run a vs run b"
  same $R/lori_a/model.safetensors $R/lori_k/model.safetensors "distill[lori] uninterrupted vs killed+resumed"
  $PY - "$R" <<'PY'
import sys
from safetensors.torch import load_file
r = sys.argv[1]
for name in ("teacher", "lori"):
    a, b, k = (load_file(f"{r}/{name}_{x}/model.safetensors") for x in "abk")
    diff = lambda x, y: max(float((x[n] - y[n]).abs().max()) for n in x)
    print(f"{name}: max |a-b| = {diff(a, b):.3g}, max |a-killed| = {diff(a, k):.3g}")
PY
} 2>&1 | tee "$OUT/reliability_gpu.txt"
tail -5 $R/log_killed >> "$OUT/reliability_gpu.txt"
