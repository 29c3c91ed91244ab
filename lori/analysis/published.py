"""Published accuracies to hold a run against, with where each number comes from.

These are other papers' models at their full training budgets (GPT-2 small / LLaMA-3.2-1B-Instruct
trained on GSM8K-Aug), so they are a reference for the *ordering* of methods, never a target in
absolute terms for a CPU-sized run. The report prints them beside a run's real-benchmark table
(:func:`published_table`) when the run evaluates GSM8K, GSM-Hard or SVAMP.
"""
from __future__ import annotations

from typing import NamedTuple

#: benchmark names (config keys) the published numbers are for, in table order
BENCHES = ("gsm8k", "gsm_hard", "svamp")
#: published columns with no benchmark of ours (iCoT-KD's 4x4 / 5x5 multiplication, BIG-bench test sets)
OTHER_TASKS = ("mult_4x4", "mult_5x5")


class Published(NamedTuple):
    model: str
    method: str
    accuracy: dict[str, float]   # benchmark -> accuracy %, only where published
    source: str


PUBLISHED: tuple[Published, ...] = (
    Published("GPT-2 small", "no_cot", {"gsm8k": 19.1}, "CODI Table 1"),
    Published("GPT-2 small", "cot_sft", {"gsm8k": 44.1, "gsm_hard": 9.8, "svamp": 41.8}, "CODI Tables 1-2"),
    Published("GPT-2 small", "icot_kd", {"gsm8k": 20.0, "mult_4x4": 96.6, "mult_5x5": 9.5},
              "iCoT-KD (Deng et al. 2023), released models' generation logs (da03/implicit_chain_of_thought, logs/)"),
    Published("GPT-2 medium", "icot_kd", {"gsm8k": 21.9, "mult_4x4": 96.1, "mult_5x5": 96.4},
              "iCoT-KD (Deng et al. 2023), released models' generation logs (da03/implicit_chain_of_thought, logs/)"),
    Published("GPT-2 small", "icot_si", {"gsm8k": 30.0}, "CODI Table 1 (iCoT-SI paper: 30.1)"),
    Published("GPT-2 small", "coconut", {"gsm8k": 34.1}, "Coconut Table 1"),
    Published("GPT-2 small", "sim_cot", {"gsm8k": 42.2}, "SIM-CoT (Wei et al. 2025): Coconut + SIM-CoT, +8.2 over Coconut"),
    Published("GPT-2 small", "codi", {"gsm8k": 43.7, "gsm_hard": 9.9, "svamp": 42.9}, "CODI Tables 1-2"),
    Published("LLaMA-3.2-1B-Instruct", "no_cot", {"gsm8k": 30.9}, "CODI Table 1 (secondary transcription)"),
    Published("LLaMA-3.2-1B-Instruct", "cot_sft", {"gsm8k": 61.6, "gsm_hard": 15.6, "svamp": 66.7},
              "CODI Tables 1-2 (secondary transcription)"),
    Published("LLaMA-3.2-1B-Instruct", "coconut", {"gsm8k": 45.3}, "CODI Table 1 (secondary transcription)"),
    Published("LLaMA-3.2-1B-Instruct", "codi", {"gsm8k": 55.6, "gsm_hard": 12.8, "svamp": 61.1},
              "CODI Tables 1-2 (secondary transcription)"),
)

#: generated tokens per GSM8K problem reported by Coconut (GPT-2): latent vs explicit CoT
PUBLISHED_TOKENS = {"coconut": 8.2, "cot_sft": 25.0}

#: the paragraph under :func:`published_table` in the report
PUBLISHED_NOTE = ("Published GSM8K-Aug-trained models at their full budgets: a reference for the "
                  "ordering of methods, not comparable in absolute terms with a run on another base model or "
                  f"budget. Coconut reports {PUBLISHED_TOKENS['coconut']} generated tokens per GSM8K problem vs "
                  f"{PUBLISHED_TOKENS['cot_sft']} for CoT.")


def published_table(benches: tuple[str, ...] = BENCHES + OTHER_TASKS) -> tuple[list[str], list[list[str]]]:
    """One row per published (model, method): accuracy % per benchmark ("—" where unpublished)."""
    header = ["base model", "method", *(f"{b} %" for b in benches), "source"]
    rows = [[p.model, p.method, *(f"{p.accuracy[b]:.1f}" if b in p.accuracy else "—" for b in benches), p.source]
            for p in PUBLISHED]
    return header, rows
