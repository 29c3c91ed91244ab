"""Batched greedy decoding with a KV cache and left padding (teacher CoT and students).

``temperature > 0`` samples instead (teacher_cot's optional extra samples per question).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lori.model.chain import prefill, start_chain
from lori.model.sequences import pad_left, prompts_ids


@torch.no_grad()
def greedy_continue(model, past, attention_mask: torch.Tensor, next_pos: torch.Tensor, logits: torch.Tensor,
                    max_new_tokens: int, eos_id: int, pad_id: int, temperature: float = 0.0) -> list[list[int]]:
    """Greedy tokens after a cached prefix; stops per row at ``eos_id`` (kept in the output).

    ``logits`` [B, V] predict the first new token; ``next_pos`` [B] is its position.
    ``temperature > 0`` samples from ``softmax(logits / temperature)`` instead of the argmax.
    """
    batch = logits.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=logits.device)
    chain = start_chain(model, past, attention_mask, next_pos, max(max_new_tokens - 1, 0))
    steps = []
    for _ in range(max_new_tokens):
        if temperature > 0:
            choice = torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1)[:, 0]
        else:
            choice = logits.argmax(-1)
        token = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long), choice)
        steps.append(token)
        done = done | (token == eos_id)
        if bool(done.all()) or len(steps) == max_new_tokens:
            break
        logits = chain.step(ids=token, logits=True, hidden=False).logits
    tokens = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(batch)]
    result = []
    for row in tokens:
        result.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return result


@dataclass
class Generation:
    text: str           # decoded continuation (special tokens dropped)
    tokens: int         # generated tokens, eos included
    latency: float      # seconds, the batch's wall time divided by its size


@torch.no_grad()
def generate_cot(model, tokenizer, questions: list[str], max_new_tokens: int, device,
                 temperature: float = 0.0) -> list[Generation]:
    """Explicit-CoT generation for one batch of questions (teacher / cot_sft): greedy, or sampled."""
    start = time.perf_counter()
    ids, mask = pad_left(prompts_ids(tokenizer, questions), tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    # no autocast here: it re-casts every weight at every generated token, which made decoding
    # 2.6x slower on an H200 (SmolLM2, batch 128); decoding runs in the model's own dtype
    past, logits, _ = prefill(model, ids, mask)      # decoding reads only the last position
    rows = greedy_continue(model, past, mask, mask.sum(1), logits, max_new_tokens,
                           tokenizer.eos_token_id, tokenizer.pad_token_id, temperature)
    per = (time.perf_counter() - start) / len(questions)
    return [Generation(tokenizer.decode(r, skip_special_tokens=True), len(r), per) for r in rows]
