"""Benchmark inputs without a finished run: a model of a given shape with random weights,
generated quickstart problems, and random teacher statistics of the right shapes.

``quickstart`` is the LLaMA of config/config.yaml (hidden 128, 4 layers, 4 heads, FFN 256) with
the word vocabulary of the problems; ``smollm2`` is SmolLM2-135M's architecture (hidden 576,
30 layers, 9 heads on 3 KV heads, FFN 1536, vocabulary 49,152, tied embeddings).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lori.artifacts.targets import Targets
from lori.data.generator import generate
from lori.data.records import Record, cot_text
from lori.lowrank.maths import Factors
from lori.model.loading import build_word_tokenizer
from lori.training.recipes.lori import TeacherTargets

QUICKSTART = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
              "intermediate_size": 256, "max_position_embeddings": 256, "tie_word_embeddings": True}
SMOLLM2 = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "intermediate_size": 1536, "max_position_embeddings": 8192, "tie_word_embeddings": True,
           "vocab_size": 49152, "rms_norm_eps": 1e-5, "rope_theta": 100000.0}
SHAPES = {"quickstart": QUICKSTART, "smollm2": SMOLLM2}
RANKS = (2, 16)          # the quickstart factorization's (rank_layer, rank_hidden)


@dataclass
class ScratchProblem:
    records: list[Record]
    tokenizer: object
    make_model: Callable[[], torch.nn.Module]    # a fresh model, the same weights every call
    targets: TeacherTargets
    factors: Factors


def scratch_problem(shape: str, device, n: int = 1000, seed: int = 0) -> ScratchProblem:
    from transformers import LlamaConfig, LlamaForCausalLM

    records = generate(n, seed)
    tokenizer = build_word_tokenizer([f"{r.question} {cot_text(r.steps)} #### {r.answer}" for r in records])
    fields = {"vocab_size": len(tokenizer), **SHAPES[shape]}       # SmolLM2 keeps its own vocabulary size
    config = LlamaConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, **fields)

    def make_model():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)

    layers, hidden = config.num_hidden_layers + 1, config.hidden_size
    rng = np.random.default_rng(seed)
    lengths = np.array([len(cot_text(r.steps).split()) for r in records])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    targets = Targets(rng.standard_normal((int(offsets[-1]), *RANKS)).astype(np.float32), offsets,
                      rng.standard_normal((n, 1, *RANKS)).astype(np.float32),
                      rng.standard_normal((n, 1, layers, hidden)).astype(np.float16), [r.id for r in records], {})
    u_layer = np.linalg.qr(rng.standard_normal((layers, RANKS[0])))[0]
    u_hidden = np.linalg.qr(rng.standard_normal((hidden, RANKS[1])))[0]
    factors = Factors(torch.from_numpy(u_layer), torch.from_numpy(u_hidden), torch.zeros(layers, hidden),
                      torch.ones(layers), list(range(layers)))
    return ScratchProblem(records, tokenizer, make_model, TeacherTargets(targets, "full").to(device),
                          factors.to(device))
