"""LoRi losses: trajectory statistics in the low-rank core, and anchors.

``L_reason = w_mean * |mu_S - mu_T|^2 / |mu_T|^2 + w_cov * |Sigma_S - Sigma_T|_F^2 / |Sigma_T|_F^2``

Means and covariances are over a trajectory's positions (the teacher's n CoT tokens, the
student's K thoughts), so the loss needs no token pairing and is invariant to trajectory
length. Our choices where the paper is silent (documented in config/README.md):

- population covariance (divide by n): defined and zero for n = 1;
- normalisers pooled over the batch (sum of errors / sum of teacher norms): a per-example
  ratio explodes for examples whose centred mean is near zero;
- ``covariance: per_layer`` uses one r_d x r_d covariance per layer mode (cheaper for big ranks).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

EPS = 1e-8


def moments(core: torch.Tensor, covariance: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of one batch of equal-length trajectories.

    core: [B, n, r_L, r_d] -> mean [B, r_L*r_d]; cov [B, r, r] (full) or [B, r_L, r_d, r_d] (per_layer).
    """
    b, n, rl, rd = core.shape
    mean = core.mean(1)                                                   # [B, r_L, r_d]
    centred = core - mean[:, None]
    if covariance == "full":
        flat = centred.reshape(b, n, rl * rd)
        cov = flat.transpose(1, 2) @ flat / n                             # [B, r, r]
    elif covariance == "per_layer":
        cov = torch.einsum("bnlr,bnls->blrs", centred, centred) / n       # [B, r_L, r_d, r_d]
    else:
        raise ValueError(f"unknown covariance {covariance!r} (full | per_layer)")
    return mean.reshape(b, -1), cov


def trajectory_moments(core: np.ndarray, offsets: np.ndarray, covariance: str = "full") -> tuple[np.ndarray, np.ndarray]:
    """Teacher statistics for every example of a ragged store ``core[offsets[i]:offsets[i+1]]``.

    Examples with an empty CoT get zeros (and are masked out of the loss by ``lengths``).
    """
    n_ex = len(offsets) - 1
    _, rl, rd = core.shape
    means = np.zeros((n_ex, rl * rd), np.float32)
    covs = np.zeros((n_ex, rl * rd, rl * rd) if covariance == "full" else (n_ex, rl, rd, rd), np.float32)
    for i in range(n_ex):
        z = core[offsets[i] : offsets[i + 1]]
        if len(z) == 0:
            continue
        m, c = moments(torch.from_numpy(np.asarray(z, np.float32))[None], covariance)
        means[i], covs[i] = m[0].numpy(), c[0].numpy()
    return means, covs


def reason_loss(mean_s: torch.Tensor, cov_s: torch.Tensor, mean_t: torch.Tensor, cov_t: torch.Tensor,
                w_mean: float = 1.0, w_cov: float = 1.0, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Normalised mean and covariance mismatch (0 when the statistics match)."""
    if valid is not None:
        mean_s, cov_s, mean_t, cov_t = mean_s[valid], cov_s[valid], mean_t[valid], cov_t[valid]
    mean_term = (mean_s - mean_t).pow(2).sum() / (mean_t.pow(2).sum() + EPS)
    cov_term = (cov_s - cov_t).pow(2).sum() / (cov_t.pow(2).sum() + EPS)
    return {"reason_mean": mean_term, "reason_cov": cov_term, "reason": w_mean * mean_term + w_cov * cov_term}


def anchor_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance between student and teacher anchor states, normalised by the teacher's scale.

    mse: ``|S - T|^2 / |T|^2`` pooled over the batch; smooth_l1: CODI-style smooth-L1 of
    ``(S - T) / std(T)``.
    """
    if kind == "mse":
        return (student - teacher).pow(2).sum() / (teacher.pow(2).sum() + EPS)
    if kind == "smooth_l1":
        std = teacher.detach().std().clamp_min(EPS)
        return F.smooth_l1_loss(student / std, teacher / std)
    raise ValueError(f"unknown anchor loss {kind!r} (mse | smooth_l1)")


def normalized_smooth_l1(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """CODI's distillation loss: per layer, smooth-L1 between student and teacher states divided by
    the std of that layer's teacher states (over batch and hidden), then averaged over layers.

    student, teacher: [B, L, d]. The teacher is detached here (CODI never trains the teacher
    pass through this loss, only through its own cross-entropy); 0 when the states match.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student states {tuple(student.shape)} vs teacher states {tuple(teacher.shape)}")
    teacher = teacher.detach()
    per_layer = [F.smooth_l1_loss(student[:, l], teacher[:, l]) / teacher[:, l].std().clamp_min(EPS)
                 for l in range(teacher.shape[1])]
    return torch.stack(per_layer).mean()


def step_slots(n_steps: int, latent_steps: int) -> list[int]:
    """The thought each of ``n_steps`` CoT steps is matched to, in order: step j -> thought
    ``ceil((j+1) K / n) - 1`` (the last thought of its even share), so every step has at least
    its share of thoughts before it. More steps than thoughts share thoughts."""
    return [-(-(j + 1) * latent_steps // n_steps) - 1 for j in range(n_steps)]


def step_summaries(core: np.ndarray, step_lengths: list[int], summary: str = "mean",
                   points: list[int] | None = None) -> np.ndarray:
    """One core state per CoT step of one trajectory: ``core`` [n, r_L, r_d] split into consecutive
    steps of ``step_lengths`` tokens (summing to n) -> [steps, r_L, r_d], the mean of each step's
    tokens, its last token, or (``result``) its token at offset ``points[j]`` within step j (clipped
    to the step), e.g. the token that predicts the step's result."""
    if sum(step_lengths) != len(core):
        raise ValueError(f"steps of {step_lengths} tokens do not cover a {len(core)}-token trajectory")
    bounds = np.cumsum([0] + list(step_lengths))
    if summary == "mean":
        return np.stack([core[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])])
    if summary == "last":
        return np.stack([core[b - 1] for b in bounds[1:]])
    if summary == "result":
        if points is None or len(points) != len(step_lengths):
            raise ValueError(f"step summary 'result' needs one point per step ({len(step_lengths)}), got {points}")
        return np.stack([core[a + min(max(p, 0), b - a - 1)] for a, b, p in zip(bounds[:-1], bounds[1:], points)])
    raise ValueError(f"unknown step summary {summary!r} (mean | last | result)")


def step_anchor_loss(thought_core: torch.Tensor, step_core: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Ordered match of the teacher's step summaries to the student's thoughts, normalised like
    the anchor: ``sum |Z_s[slot_j] - S_j|^2 / sum |S_j|^2`` over the batch's valid steps.

    thought_core [B, K, r_L, r_d]; step_core [B, J, r_L, r_d] (padded); slots [B, J] long, -1 = padding.
    0 when every matched thought equals its step's summary.
    """
    valid = slots >= 0
    picked = torch.gather(thought_core, 1, slots.clamp_min(0)[:, :, None, None].expand_as(step_core))
    err = (picked - step_core).pow(2).sum((2, 3))[valid].sum()
    return err / (step_core.pow(2).sum((2, 3))[valid].sum() + EPS)
