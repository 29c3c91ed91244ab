"""SIM-CoT's auxiliary step decoder (Wei et al. 2025, "SIM-CoT: Supervised Implicit Chain-of-Thought").

A separate causal LM, used in training only, that reads a group of continuous thoughts as input
embeddings and is trained to write the explicit CoT step they stand for::

    [thought_1 .. thought_c] step tokens <eos>      (cross-entropy on "step tokens <eos>")

so every thought is pushed to hold its step's content. The decoder is not part of the student:
it is never saved, and the student evaluates exactly as its method does without it.

Which group of thoughts decodes which step (:func:`step_groups`) follows the reference code:
group g (thoughts g*c .. g*c+c-1) decodes step g; with more steps than groups the steps from the
last group's on are joined into its target; groups without a step have no target (the reference
feeds them the answer text as a "pseudo thought": ours, documented in docs/method.md).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def step_groups(n_steps: int, groups: int, covered: int | None = None) -> list[list[int]]:
    """The CoT steps each of ``groups`` thought groups decodes (possibly none). ``covered``: only the
    first ``covered`` steps are replaced by thoughts (Coconut's stage k); None = every step."""
    n = n_steps if covered is None else min(n_steps, covered)
    out: list[list[int]] = [[] for _ in range(groups)]
    if groups == 0:
        return out
    for j in range(n):
        out[min(j, groups - 1)].append(j)
    return out


class StepDecoder(nn.Module):
    """Decodes a thought group into its CoT step: ``lm`` is a causal LM of the student's width."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, thoughts: torch.Tensor, step_embeds: torch.Tensor, step_ids: torch.Tensor,
                step_mask: torch.Tensor) -> torch.Tensor:
        """Mean over the S decoded steps of each step's token-mean cross-entropy.

        thoughts [S, c, d] (the group's thoughts, as fed to the student); step_embeds [S, T, d] the
        target tokens' input embeddings; step_ids [S, T] the target tokens (a step and its <eos>),
        right-padded; step_mask [S, T] 1 on real tokens. The last thought predicts the first token."""
        c = thoughts.shape[1]
        inputs = torch.cat([thoughts, step_embeds.to(thoughts.dtype)], dim=1)              # [S, c + T, d]
        mask = torch.cat([torch.ones_like(step_mask[:, :1]).expand(-1, c), step_mask], dim=1)
        logits = self.lm(inputs_embeds=inputs, attention_mask=mask).logits[:, c - 1 : -1]  # predict step_ids
        targets = step_ids.masked_fill(step_mask == 0, -100)
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                    ignore_index=-100, reduction="none").view(targets.shape)
        per_step = per_token.sum(1) / step_mask.sum(1).clamp_min(1)
        return per_step.mean()
