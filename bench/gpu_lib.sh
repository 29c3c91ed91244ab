# Sourced by the prepared GPU scripts (gpu_check.sh, chain_gpu.sh) after they set $OUT and $PY:
#   . "$(dirname "$0")/gpu_lib.sh" LOG_NAME
# sets $log ($OUT/LOG_NAME), defines `step CMD...` (runs CMD, its output into $log, a FAILED
# line instead of stopping) and writes the GPU and library versions at the top of the log.
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "$OUT"
log="$OUT/$1"
step() { echo "=== $* ($(date +%T))" | tee -a "$log"; "$@" >>"$log" 2>&1 || echo "FAILED: $*" | tee -a "$log"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"; } | tee -a "$log"
